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
    CLIENT_V4, CLIENT_V6, CLIENT2_V4, INSIDE, Lab, OUTSIDE, SERVER_V4, SERVER_V6, ScopedChild,
    syn::SynFlood,
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
    /// max-conns, max-embryonic, per-client-max, per-client-embryonic-max.
    fn new(max_conns: u32, max_embryonic: u32, per_client_max: u32, pce: u32) -> Self {
        Self {
            max_conns,
            max_embryonic,
            per_client_max,
            per_client_embryonic_max: pce,
        }
    }

    fn entry(&self, server: IpAddr, action: &str) -> String {
        format!(
            "[[server]]\naddress = \"{server}\"\nmax-conns = {}\nmax-embryonic = {}\n\
             per-client-max = {}\nper-client-embryonic-max = {}\non-embryonic-limit = \"{action}\"\n",
            self.max_conns, self.max_embryonic, self.per_client_max, self.per_client_embryonic_max
        )
    }
}

/// A lab whose gateway runs the daemon (no proxy) with one policy, in
/// front of smtp-sink, the spoofed sources routed to where nothing
/// answers. Fields drop in order: the daemon before the lab.
struct Attacked {
    _sink: ScopedChild,
    daemon: Option<ScopedChild>,
    _policy: PolicyFile,
    pins: PinDir,
    lab: Lab,
}

impl Attacked {
    fn start(test: &str, policy: &str, server: IpAddr, ifaces: &[&str]) -> Self {
        let lab = lab(test);
        let pins = PinDir::new(test);
        let policy = PolicyFile::new(test, policy);
        let daemon = start_daemon_with(&lab, &pins, ifaces, Some(policy.path()), &NO_PROXY);
        route_spoofed_sources_to_client(&lab);
        let sink = start_smtp_sink(&lab, server);
        Self {
            _sink: sink,
            daemon: Some(daemon),
            _policy: policy,
            pins,
            lab,
        }
    }

    fn both_sides(test: &str, policy: &str, server: IpAddr) -> Self {
        Self::start(test, policy, server, &[OUTSIDE, INSIDE])
    }

    fn counts(&self, server: IpAddr) -> (u64, u64) {
        server_counts(&self.pins, server)
    }

    fn stats(&self) -> serde_json::Value {
        stats_json(self.pins.path())
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
/// of the flood's half-open connections than the lowest server limit.
fn per_client_through_flood(test: &str, limits: Limits) {
    let (client, server) = (IpAddr::from(CLIENT_V4), IpAddr::from(SERVER_V4));
    let a = Attacked::both_sides(test, &limits.entry(server, "intercept"), server);

    let through = swaks_during_flood(&a.lab, client, server);
    let json = a.stats();
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
    per_client_through_flood("pc50", Limits::new(50, 100, 5, 2));
}

/// `tcp 3 20` with per-client limits of one: max-conns is full of
/// half-open flows and the client's own limits are as low as they go.
#[test]
fn per_client_limits_of_one_with_tcp_3_20_serve_a_real_client_through_a_flood() {
    per_client_through_flood("pc3", Limits::new(3, 20, 1, 1));
}

/// max-embryonic below max-conns, per-client limits between them.
#[test]
fn per_client_limits_with_max_embryonic_below_max_conns_serve_a_real_client() {
    per_client_through_flood("pcemb", Limits::new(100, 3, 10, 1));
}

/// The one row where intercept drops: a client whose established
/// connections fill `per-client-max` gets no more, even through a cookie,
/// while another client is served through the same flood.
#[test]
fn per_client_max_full_of_established_drops_that_client_only() {
    let (server, test) = (IpAddr::from(SERVER_V4), "pcfull");
    let limits = Limits::new(10, 3, 1, 1);
    let a = Attacked::both_sides(test, &limits.entry(server, "intercept"), server);
    let addr = SocketAddr::new(server, PORT);
    let held = banner(&a.lab, CLIENT_V4.into(), addr).expect("the first connection");

    let through = swaks_during_flood(&a.lab, CLIENT2_V4.into(), server);
    through.assert_delivered("another client");
    let err = a
        .lab
        .client
        .tcp_connect(CLIENT_V4.into(), addr, Duration::from_secs(2))
        .unwrap()
        .expect_err("over per-client-max");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    let json = a.stats();
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
    let limits = Limits::new(0, 20, 0, 0);
    let a = Attacked::both_sides(
        test,
        &format!(
            "{}\n[timeouts]\nembryonic = 2\n",
            limits.entry(server, action)
        ),
        server,
    );
    let mut flood = SynFlood::new(&a.lab.client, SocketAddr::new(server, PORT)).unwrap();
    flood.send(200).unwrap();
    assert!(
        wait_until(Duration::from_secs(2), || syn_recv(&a.lab.server) == 20),
        "20 half-open at the server: {}",
        syn_recv(&a.lab.server)
    );
    // Flooding through several expiries: each sweep resets what expired
    // and new SYNs take the freed slots.
    for _ in 0..50 {
        flood.send(20).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    // 30 s: half the time the server would keep them by itself.
    assert!(
        wait_until(Duration::from_secs(30), || syn_recv(&a.lab.server) == 0),
        "the server's SYN queue still holds {} after the embryonic timeout: {}",
        syn_recv(&a.lab.server),
        a.stats()
    );
    let json = a.stats();
    let resets = counter(&json, "intercept", "server-resets");
    assert!(resets >= 40, "{json}");
    // The server took them as resets of its half-open connections.
    assert!(
        embryonic_rsts(&a.lab) >= 40,
        "{} of {resets}",
        embryonic_rsts(&a.lab)
    );
    assert_eq!(a.counts(server), (0, 0), "{json}");
    // And the real client is still served afterwards.
    let out = support::flood::swaks(&a.lab, client, server);
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
    let limits = Limits::new(3, 20, 0, 0);
    let a = Attacked::both_sides(test, &limits.entry(server, "intercept"), server);
    let mut flood = SynFlood::new(&a.lab.client, SocketAddr::new(server, PORT)).unwrap();
    flood.send(200).unwrap();
    assert!(
        wait_until(Duration::from_secs(2), || syn_recv(&a.lab.server) == 3),
        "max-conns of half-open at the server: {}",
        syn_recv(&a.lab.server)
    );
    let held = banner(&a.lab, CLIENT_V4.into(), SocketAddr::new(server, PORT))
        .expect("a verified client through the cookie");
    assert!(
        wait_until(Duration::from_secs(5), || syn_recv(&a.lab.server) == 2
            && a.counts(server) == (2, 1)),
        "one half-open flow reset: {} at the server, counts {:?}",
        syn_recv(&a.lab.server),
        a.counts(server)
    );
    let json = a.stats();
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
    let entry = Limits::new(3, 20, 0, 0).entry(server, "intercept");
    let mut a = Attacked::start(test, &entry, server, &[OUTSIDE]);
    assert!(
        wait_until(Duration::from_secs(10), || xdp_attached(&a.lab, INSIDE)),
        "attached to {INSIDE}, the route to {server}"
    );
    let through = swaks_during_flood(&a.lab, CLIENT_V4.into(), server);
    let json = a.stats();
    through.assert_delivered(&json.to_string());
    assert!(counter(&json, "intercept", "servers-opened") >= 1, "{json}");
    let status = a.daemon.take().unwrap().terminate().unwrap();
    assert!(status.success(), "{status}");
    for iface in [OUTSIDE, INSIDE] {
        assert!(!xdp_attached(&a.lab, iface), "{iface} still attached");
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
    let limits = Limits::new(3, 20, 0, 0);
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

/// A blind, spoofed RST with a wrong sequence number does not free a
/// half-open flow's slot (the server drops it too: RFC 5961); the client's own RST,
/// at its ISN + 1, does, and frees the server's SYN queue entry.
#[test]
fn a_spoofed_rst_out_of_sequence_frees_no_slot() {
    use inspector_lab::{packets, raw::RawIp};
    let (server, test) = (SERVER_V4, "rstinject");
    let entry = Limits::new(0, 5, 0, 0).entry(server.into(), "drop");
    let a = Attacked::both_sides(test, &entry, server.into());
    let raw = RawIp::new(&a.lab.client, false).unwrap();
    let src = std::net::Ipv4Addr::new(198, 19, 7, 7);
    let send = |flags: u8, seq: u32| {
        let tcp = packets::tcp_segment(
            src.into(),
            server.into(),
            (4242, PORT),
            seq,
            flags,
            &[],
            &[],
        );
        raw.send(&packets::ipv4_packet(src, server, 6, &tcp), server.into())
            .unwrap();
    };
    let isn = 0x1000_0000u32;
    send(0x02, isn);
    assert!(
        wait_until(Duration::from_secs(2), || syn_recv(&a.lab.server) == 1
            && a.counts(server.into()) == (1, 0)),
        "one half-open flow"
    );
    // Out of the server's window (before ISN + 1, or far beyond it). One
    // inside the window but not at ISN + 1 the server would take while the
    // count kept the flow until its timeout: stricter, never more lenient.
    for wrong in [isn, isn.wrapping_sub(1000), isn.wrapping_add(0x4000_0000)] {
        send(0x04, wrong);
    }
    // Past a sweep: the count still holds the flow, and so does the server.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        a.counts(server.into()),
        (1, 0),
        "a spoofed RST freed the slot"
    );
    assert_eq!(syn_recv(&a.lab.server), 1, "the server dropped its entry");
    send(0x04, isn.wrapping_add(1));
    assert!(
        wait_until(Duration::from_secs(2), || syn_recv(&a.lab.server) == 0
            && a.counts(server.into()) == (0, 0)),
        "the client's RST frees both: {} at the server, counts {:?}",
        syn_recv(&a.lab.server),
        a.counts(server.into())
    );
}

/// What a client holding its `per-client-max` of established connections
/// sends on their tuples, hoping the kernel forgets them while the server
/// keeps them.
#[derive(Clone, Copy, Debug)]
enum Forged {
    /// FINs and RSTs at sequence numbers the server does not reset at: in
    /// its window but not its RCV.NXT (a challenge ACK), before it and far
    /// beyond it (dropped): RFC 5961 section 3.
    WrongSequence,
    /// New SYNs (the server answers with a challenge ACK: RFC 5961 section 4).
    Syn,
    /// An RST and a FIN at the exact next sequence number that the server
    /// never takes: a bad checksum, or a TTL that ends at the gateway.
    ExactButLost,
    /// Bytes the server never takes (a bad checksum), then an RST and a
    /// FIN just past them.
    PastLostBytes,
}

/// What makes a forged segment one the gateway sees and the server never does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lost {
    No,
    BadChecksum,
    /// TTL (hop limit) 1: the gateway does not forward it.
    Ttl,
}

/// A TCP segment in its IP packet, from `client` to `server`, `lost` as asked.
fn forge(
    (client, server): (IpAddr, IpAddr),
    ports: (u16, u16),
    (seq, ack): (u32, u32),
    flags: u8,
    payload: &[u8],
    lost: Lost,
) -> Vec<u8> {
    use inspector_lab::packets;
    let mut tcp = packets::tcp_segment(client, server, ports, seq, flags, &[], payload);
    if ack != 0 {
        // The checksum is a one's complement sum: patch it with the field.
        tcp[8..12].copy_from_slice(&ack.to_be_bytes());
        tcp[16..18].copy_from_slice(&[0, 0]);
        let addresses = match (client, server) {
            (IpAddr::V4(c), IpAddr::V4(s)) => [c.octets().as_slice(), &s.octets()].concat(),
            (IpAddr::V6(c), IpAddr::V6(s)) => [c.octets().as_slice(), &s.octets()].concat(),
            _ => unreachable!("one family"),
        };
        let check = inspector_common::csum::tcp(&addresses, &tcp);
        tcp[16..18].copy_from_slice(&check.to_be_bytes());
    }
    if lost == Lost::BadChecksum {
        tcp[17] ^= 0x5a;
    }
    let mut packet = match (client, server) {
        (IpAddr::V4(c), IpAddr::V4(s)) => packets::ipv4_packet(c, s, 6, &tcp),
        (IpAddr::V6(c), IpAddr::V6(s)) => [packets::ipv6(c, s, 6, tcp.len()), tcp].concat(),
        _ => unreachable!("one family"),
    };
    if lost == Lost::Ttl {
        if client.is_ipv4() {
            packet[8] = 1;
            packet[10..12].copy_from_slice(&[0, 0]);
            let check = inspector_common::csum::ipv4_header(packet[..20].try_into().unwrap());
            packet[10..12].copy_from_slice(&check.to_be_bytes());
        } else {
            packet[7] = 1;
        }
    }
    packet
}

/// A client with `per-client-max = 2` holds two established connections
/// and sends `forged` segments on both: the kernel keeps counting them, as
/// the server keeps holding them, so a third connection is still dropped.
/// An RST at the exact next sequence number frees one slot, at the server
/// too, and the third connection gets through.
fn forged_segments_free_no_established_slot(
    test: &str,
    client: IpAddr,
    server: IpAddr,
    forged: Forged,
) {
    use inspector_lab::raw::RawIp;
    let limits = Limits::new(0, 0, 2, 0);
    let a = Attacked::both_sides(test, &limits.entry(server, "drop"), server);
    let addr = SocketAddr::new(server, PORT);
    let held = [0, 1].map(|_| banner(&a.lab, client, addr).expect("a connection under the limit"));
    assert!(
        wait_until(Duration::from_secs(2), || a.counts(server) == (0, 2)
            && server_established(&a.lab, client) == 2),
        "two established connections: counts {:?}",
        a.counts(server)
    );
    let raw = RawIp::new(&a.lab.client, client.is_ipv6()).unwrap();
    let send_lost = |s: &TcpStream, flags: u8, seq: u32, payload: &[u8], lost: Lost| {
        let port = s.local_addr().unwrap().port();
        let packet = forge(
            (client, server),
            (port, PORT),
            (seq, 0),
            flags,
            payload,
            lost,
        );
        raw.send(&packet, server).unwrap();
    };
    let send = |s: &TcpStream, flags: u8, seq: u32| send_lost(s, flags, seq, &[], Lost::No);
    let next = held.each_ref().map(send_next);
    let still_held = |what: &str| {
        // Past a sweep, which would correct counts from the flow table.
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(
            a.counts(server),
            (0, 2),
            "{what} freed a slot the server holds"
        );
        assert_eq!(
            server_established(&a.lab, client),
            2,
            "the server let go after {what}"
        );
    };
    const FIN_ACK: u8 = 0x11;
    const RST: u8 = 0x04;
    const SYN: u8 = 0x02;
    for (s, next) in held.iter().zip(next) {
        match forged {
            Forged::WrongSequence => {
                send(s, FIN_ACK, next.wrapping_add(100));
                still_held("a FIN out of sequence");
                for wrong in [100, 0u32.wrapping_sub(1000), 0x4000_0000] {
                    send(s, RST, next.wrapping_add(wrong));
                }
                still_held("an RST out of sequence");
            }
            Forged::Syn => {
                for isn in [next.wrapping_add(100), 0x1234_5678] {
                    send(s, SYN, isn);
                }
                still_held("a SYN on an established tuple");
            }
            Forged::ExactButLost => {
                for lost in [Lost::BadChecksum, Lost::Ttl] {
                    send_lost(s, RST, next, &[], lost);
                    send_lost(s, FIN_ACK, next, &[], lost);
                }
                still_held("an RST and a FIN at the next number that the server never got");
            }
            Forged::PastLostBytes => {
                let bytes = b"NOOP\r\n";
                send_lost(s, 0x18, next, bytes, Lost::BadChecksum);
                let past = next.wrapping_add(bytes.len() as u32);
                send(s, FIN_ACK, past);
                send(s, RST, past);
                still_held("an RST and a FIN past bytes the server never got");
            }
        }
    }
    let err = a
        .lab
        .client
        .tcp_connect(client, addr, Duration::from_secs(2))
        .unwrap()
        .expect_err("a third connection over per-client-max");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");

    send(&held[0], RST, next[0]);
    assert!(
        wait_until(Duration::from_secs(2), || a.counts(server) == (0, 1)
            && server_established(&a.lab, client) == 1),
        "the exact RST frees the slot at both: counts {:?}, the server holds {}",
        a.counts(server),
        server_established(&a.lab, client)
    );
    let third = banner(&a.lab, client, addr).expect("the third connection, in the freed slot");
    drop((held, third));
}

#[test]
fn rsts_and_fins_out_of_sequence_free_no_established_slot_v4() {
    let (c, s) = (CLIENT_V4.into(), SERVER_V4.into());
    forged_segments_free_no_established_slot("estrst4", c, s, Forged::WrongSequence);
}

#[test]
fn rsts_and_fins_out_of_sequence_free_no_established_slot_v6() {
    let (c, s) = (CLIENT_V6.into(), SERVER_V6.into());
    forged_segments_free_no_established_slot("estrst6", c, s, Forged::WrongSequence);
}

#[test]
fn syns_on_established_tuples_free_no_slot_v4() {
    let (c, s) = (CLIENT_V4.into(), SERVER_V4.into());
    forged_segments_free_no_established_slot("estsyn4", c, s, Forged::Syn);
}

#[test]
fn syns_on_established_tuples_free_no_slot_v6() {
    let (c, s) = (CLIENT_V6.into(), SERVER_V6.into());
    forged_segments_free_no_established_slot("estsyn6", c, s, Forged::Syn);
}

#[test]
fn rsts_and_fins_the_server_never_gets_free_no_established_slot_v4() {
    let (c, s) = (CLIENT_V4.into(), SERVER_V4.into());
    forged_segments_free_no_established_slot("estlost4", c, s, Forged::ExactButLost);
}

#[test]
fn rsts_and_fins_the_server_never_gets_free_no_established_slot_v6() {
    let (c, s) = (CLIENT_V6.into(), SERVER_V6.into());
    forged_segments_free_no_established_slot("estlost6", c, s, Forged::ExactButLost);
}

#[test]
fn rsts_and_fins_past_bytes_the_server_never_got_free_no_established_slot() {
    let (c, s) = (CLIENT_V4.into(), SERVER_V4.into());
    forged_segments_free_no_established_slot("estpast4", c, s, Forged::PastLostBytes);
}

/// A client that resets its connection right after sending a command
/// (SO_LINGER 0: the RST follows bytes the server has not acknowledged
/// yet) gets its slot back within a sweep or two: the sweeper asks the
/// server, which no longer has the connection.
#[test]
fn a_clients_rst_after_unacknowledged_bytes_frees_its_slot() {
    use std::io::Write;
    let (client, server, test) = (IpAddr::from(CLIENT_V4), IpAddr::from(SERVER_V4), "rstdata");
    let limits = Limits::new(0, 0, 1, 0);
    let a = Attacked::both_sides(test, &limits.entry(server, "drop"), server);
    let addr = SocketAddr::new(server, PORT);
    let mut held = banner(&a.lab, client, addr).expect("a connection under the limit");
    assert!(
        wait_until(Duration::from_secs(2), || a.counts(server) == (0, 1)),
        "one established connection: counts {:?}",
        a.counts(server)
    );
    held.write_all(b"NOOP\r\n").unwrap();
    socket2::SockRef::from(&held)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(held);
    assert!(
        wait_until(Duration::from_secs(4), || a.counts(server) == (0, 0)
            && server_established(&a.lab, client) == 0),
        "the slot comes back: counts {:?}, the server holds {}",
        a.counts(server),
        server_established(&a.lab, client)
    );
    let again = banner(&a.lab, client, addr).expect("the next connection, in the freed slot");
    drop(again);
}

/// Half-open flows of spoofed sources whose RST (at the exact ISN + 1)
/// never reaches the server, and whose blind ACK acknowledges nothing the
/// server sent: the kernel keeps counting them embryonic, so the server's
/// SYN queue never holds more than `max-embryonic`, and the sweeper resets
/// each one the client asked to reset at the server itself.
#[test]
fn half_open_flows_whose_rst_or_ack_the_server_never_takes_stay_counted() {
    use inspector_lab::raw::RawIp;
    let (server, test) = (SERVER_V4, "emblost");
    let entry = Limits::new(0, 3, 0, 0).entry(server.into(), "drop");
    let a = Attacked::both_sides(test, &entry, server.into());
    let raw = RawIp::new(&a.lab.client, false).unwrap();
    let send = |src: std::net::Ipv4Addr, seq_ack: (u32, u32), flags: u8, lost: Lost| {
        let pair = (IpAddr::from(src), IpAddr::from(server));
        let packet = forge(pair, (4242, PORT), seq_ack, flags, &[], lost);
        raw.send(&packet, server.into()).unwrap();
    };
    let isn = 0x2000_0000u32;
    let mut most = 0;
    for i in 0..10u8 {
        let src = std::net::Ipv4Addr::new(198, 19, 8, 10 + i);
        send(src, (isn, 0), 0x02, Lost::No);
        // A blind ACK (the SYN-ACK went to the spoofed source), and an RST
        // with a bad checksum or a TTL that ends at the gateway.
        send(src, (isn + 1, 0x0bad_0001), 0x10, Lost::No);
        let lost = if i % 2 == 0 {
            Lost::BadChecksum
        } else {
            Lost::Ttl
        };
        send(src, (isn + 1, 0), 0x04, lost);
        std::thread::sleep(Duration::from_millis(20));
        most = most.max(syn_recv(&a.lab.server));
    }
    assert!(most > 0, "the SYNs reached the server");
    assert!(most <= 3, "the server held {most} half-open");
    assert!(
        wait_until(Duration::from_secs(3), || a.counts(server.into()) == (0, 0)
            && syn_recv(&a.lab.server) == 0),
        "each reset at the server by the sweeper: {} there, counts {:?}",
        syn_recv(&a.lab.server),
        a.counts(server.into())
    );
    let json = a.stats();
    assert!(counter(&json, "intercept", "server-resets") >= 3, "{json}");
}

/// Established connections at the server from `client`.
fn server_established(lab: &Lab, client: IpAddr) -> usize {
    // ss reads an IPv6 address's last colon as a port's, but for brackets.
    let client_filter = match client {
        IpAddr::V4(c) => c.to_string(),
        IpAddr::V6(c) => format!("[{c}]"),
    };
    let out = lab
        .server
        .command("ss")
        .args(["-Htn", "state", "established", "dst", &client_filter])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// The next sequence number `s` sends (it has sent nothing since its
/// handshake that is not acknowledged): read in TCP repair mode (root),
/// which the socket leaves at once without a window probe.
fn send_next(s: &TcpStream) -> u32 {
    use std::os::fd::AsRawFd;
    const TCP_SEND_QUEUE: libc::c_int = 2;
    const TCP_REPAIR_OFF_NO_WP: libc::c_int = -1;
    let fd = s.as_raw_fd();
    let set = |option, value: libc::c_int| {
        // SAFETY: a valid socket and an int option of the right size.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_TCP,
                option,
                (&raw const value).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(
            rc,
            0,
            "TCP repair option {option}: {}",
            std::io::Error::last_os_error()
        );
    };
    set(libc::TCP_REPAIR, 1);
    set(libc::TCP_REPAIR_QUEUE, TCP_SEND_QUEUE);
    let mut seq = 0u32;
    let mut len = size_of::<u32>() as libc::socklen_t;
    // SAFETY: as above, with room for the u32 the option returns.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_TCP,
            libc::TCP_QUEUE_SEQ,
            (&raw mut seq).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_QUEUE_SEQ: {}", std::io::Error::last_os_error());
    set(libc::TCP_REPAIR, TCP_REPAIR_OFF_NO_WP);
    seq
}
