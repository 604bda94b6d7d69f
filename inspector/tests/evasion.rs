//! No way around the inspection through the packet's shape: SYNs sent as
//! an attacker with its own TCP stack would (fragmented, behind long IPv6
//! extension chains, in VLAN and QinQ frames, crafted with raw sockets in
//! the client namespace, from the client's own address) through the real
//! path: the gateway runs the daemon with its proxy, the server runs
//! Postfix's smtp-sink on ports 25 and 2525. Each SYN must either reach
//! the engine (a half-open connection of the proxy's listener on the
//! gateway) or be dropped (and counted): it never reaches the server from
//! the client's address. Controls show that the same packets do reach the
//! server when nothing stops them (sent before the daemon starts, or to
//! port 2525 of a server that is not protected), so "not there" means
//! dropped. Needs root; fails, never skips, without it.

mod support;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    time::Duration,
};

use inspector_common::ParseDrop;
use inspector_lab::{
    CLIENT_V4, CLIENT_V6, Lab, MAIL_GATEWAY_V4, Netns, OUTSIDE, SERVER_V4, SERVER_V6, ScopedChild,
    packets::*,
    raw::{RawEthernet, RawIp, mac},
};
use support::{proxy::Fixture, stats_json, wait_until};

/// The server the policy protects (limits); MAIL_GATEWAY_V4 and SERVER_V6
/// are not protected.
const POLICY: &str = "[[server]]\naddress = \"198.18.1.25\"\nmax-embryonic = 100\n";
/// A port neither inspected nor limited on servers that are not protected.
const OTHER_PORT: u16 = 2525;
/// How long half-open connections are left to appear.
const SETTLE: Duration = Duration::from_secs(2);

struct Setup {
    // Dropped first: the servers, then the daemon and the lab.
    _sinks: Vec<ScopedChild>,
    f: Fixture,
}

impl Setup {
    /// The lab and the servers; the daemon is started by [`Self::start`].
    fn new(name: &str) -> Self {
        let f = Fixture::bare(name, POLICY);
        let sinks = ["0.0.0.0:25", "[::]:25", "0.0.0.0:2525", "[::]:2525"]
            .map(|addr| f.start_sink(addr))
            .into();
        // The client's stack does not know the crafted connections: it would
        // answer the server's SYN-ACK with an RST and end them at once.
        nft(
            &f.lab.client,
            // (nft would read a later fragment's data as the TCP flags.)
            "table inet evasion {\n chain out {\n  type filter hook output priority 0;\n  \
             ip frag-off & 0x1fff != 0 accept\n  tcp flags rst drop\n }\n}\n",
        );
        Self { _sinks: sinks, f }
    }

    /// `new` and the daemon.
    fn started(name: &str) -> Self {
        let mut s = Self::new(name);
        s.start();
        s
    }

    fn start(&mut self) {
        self.f.start_daemon();
    }

    fn lab(&self) -> &Lab {
        &self.f.lab
    }

    /// Whether `ns` holds a TCP socket whose peer is `client`:`port`
    /// (half-open or established).
    fn holds(ns: &Netns, client: IpAddr, port: u16) -> bool {
        let out = ns.command("ss").args(["-Htan"]).output().unwrap();
        let peer = match client {
            IpAddr::V4(a) => format!("{a}:{port}"),
            IpAddr::V6(a) => format!("[{a}]:{port}"),
        };
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.split_whitespace().nth(4) == Some(peer.as_str()))
    }

    /// The SYN from `client`:`port` reached the server.
    fn server_holds(&self, client: IpAddr, port: u16) -> bool {
        Self::holds(&self.lab().server, client, port)
    }

    /// The SYN from `client`:`port` reached the engine's listener.
    fn engine_holds(&self, client: IpAddr, port: u16) -> bool {
        Self::holds(&self.lab().gateway, client, port)
    }

    fn assert_at_server(&self, client: IpAddr, port: u16, what: &str) {
        assert!(
            wait_until(SETTLE, || self.server_holds(client, port)),
            "{what}: the control did not reach the server"
        );
        assert!(!self.engine_holds(client, port), "{what}");
    }

    /// Sends `packets` (IP packets from the client) before the daemon
    /// runs, to `dst`, and checks that the server holds the connection:
    /// what the inspector must stop.
    fn assert_reaches_without_inspector(
        &self,
        raw: &RawIp,
        packets: &[Vec<u8>],
        dst: IpAddr,
        client: IpAddr,
        port: u16,
        what: &str,
    ) {
        assert!(self.f.daemon.is_none());
        for p in packets {
            raw.send(p, dst).unwrap();
        }
        self.assert_at_server(client, port, &format!("{what}, no inspector"));
    }

    /// The first control after the start: `packet` is sent again each
    /// second, as a client's TCP retransmits its SYN, until the engine
    /// holds it (once, the first SYN after the start went unanswered on a
    /// machine loaded by builds); then as [`Self::assert_at_engine`].
    fn first_at_engine(&self, raw: &RawIp, packet: &[u8], dst: IpAddr, client: IpAddr, port: u16) {
        for _ in 0..3 {
            raw.send(packet, dst).unwrap();
            if wait_until(Duration::from_secs(1), || self.engine_holds(client, port)) {
                break;
            }
        }
        self.assert_at_engine(client, port, "the first whole SYN to port 25");
    }

    fn assert_at_engine(&self, client: IpAddr, port: u16, what: &str) {
        assert!(
            wait_until(SETTLE, || self.engine_holds(client, port)),
            "{what}: did not reach the engine"
        );
        assert!(
            !self.server_holds(client, port),
            "{what}: reached the server"
        );
    }

    fn assert_dropped(&self, client: IpAddr, port: u16, what: &str) {
        std::thread::sleep(SETTLE);
        assert!(
            !self.server_holds(client, port),
            "{what}: reached the server from the client's address"
        );
        assert!(
            !self.engine_holds(client, port),
            "{what}: reached the engine"
        );
    }

    /// `parse_drops` of `inspector stats --json`.
    fn drops(&self, reason: ParseDrop) -> u64 {
        stats_json(self.f.pins.path())["parse_drops"][reason.name()]
            .as_u64()
            .unwrap()
    }

    /// The embryonic connections the limits count for SERVER_V4.
    fn embryonic(&self) -> u64 {
        let json = stats_json(self.f.pins.path());
        json["limits"]["servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["address"] == SERVER_V4.to_string())
            .map(|s| s["embryonic"].as_u64().unwrap())
            .unwrap()
    }
}

fn nft(ns: &Netns, ruleset: &str) {
    use std::io::Write;
    let mut child = ns
        .command("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(ruleset.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A SYN with a 40-byte header and 16 bytes of data: a first fragment of
/// 40 bytes holds the whole header, one of 8 only the ports.
fn syn_to(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Vec<u8> {
    syn(src, dst, (sport, dport), &[0x55; 16])
}

/// Sends `pieces` of a TCP segment from the client as fragments of datagram `id`.
fn send_fragments(raw: &RawIp, src: IpAddr, dst: IpAddr, id: u32, pieces: &[Piece]) {
    for packet in fragments(src, dst, TCP, id, pieces) {
        raw.send(&packet, dst).unwrap();
    }
}

#[test]
fn ipv4_fragmented_syns_never_reach_the_server_uninspected() {
    let mut s = Setup::new("evfrag4");
    let raw = RawIp::new(&s.lab().client, false).unwrap();
    let (client, server, other) = (
        IpAddr::from(CLIENT_V4),
        IpAddr::from(SERVER_V4),
        IpAddr::from(MAIL_GATEWAY_V4),
    );
    // What the issue found: without the inspector a SYN to port 25 in a
    // tiny first fragment and the rest becomes a half-open connection on
    // the server (the server reassembles it).
    let segment = syn_to(client, other, 41000, 25);
    s.assert_reaches_without_inspector(
        &raw,
        &fragments(client, other, TCP, 1, &split(&segment, &[8])),
        other,
        client,
        41000,
        "tiny first fragment to port 25",
    );
    s.start();
    let whole = |sport, dst, dport| {
        let segment = syn_to(client, dst, sport, dport);
        let IpAddr::V4(d) = dst else { unreachable!() };
        ipv4_packet(CLIENT_V4, d, TCP, &segment)
    };

    // Controls: a whole SYN to port 25 goes to the engine; a fragmented SYN
    // to port 2525 of a server that is not protected reaches the server.
    s.first_at_engine(&raw, &whole(41001, server, 25), server, client, 41001);
    let segment = syn_to(client, other, 41002, OTHER_PORT);
    send_fragments(&raw, client, other, 2, &split(&segment, &[40]));
    s.assert_at_server(client, 41002, "fragmented SYN to port 2525");

    // RFC 1858's tiny fragment: the first 8 bytes (the ports) alone.
    let tiny = s.drops(ParseDrop::TinyFragment);
    let segment = syn_to(client, other, 41003, 25);
    send_fragments(&raw, client, other, 3, &split(&segment, &[8]));
    s.assert_dropped(client, 41003, "tiny first fragment");
    assert!(s.drops(ParseDrop::TinyFragment) > tiny);

    // A normal first fragment (the whole header), to port 25 of a server
    // that is not protected, and to any port of the protected server.
    let tcp_fragments = s.drops(ParseDrop::TcpFragment);
    let segment = syn_to(client, other, 41004, 25);
    send_fragments(&raw, client, other, 4, &split(&segment, &[40]));
    s.assert_dropped(client, 41004, "fragmented SYN to port 25");
    let segment = syn_to(client, server, 41005, OTHER_PORT);
    send_fragments(&raw, client, server, 5, &split(&segment, &[40]));
    s.assert_dropped(client, 41005, "fragmented SYN to the protected server");
    // Both fragments of both datagrams.
    assert!(s.drops(ParseDrop::TcpFragment) >= tcp_fragments + 4);

    // Overlapping: an innocent first fragment (port 2525), then a second
    // first fragment rewriting the ports to 25 (RFC 3128), then the rest.
    let overlaps = s.drops(ParseDrop::FragmentOverlap);
    let innocent = syn_to(client, other, 41006, OTHER_PORT);
    let rewrite = tcp_segment(client, other, (41006, 25), 1, 0x02, &[], &[0; 4]);
    send_fragments(
        &raw,
        client,
        other,
        6,
        &[
            Piece {
                offset: 0,
                more: true,
                data: innocent[..40].to_vec(),
            },
            Piece {
                offset: 0,
                more: true,
                data: rewrite,
            },
            Piece {
                offset: 40,
                more: false,
                data: innocent[40..].to_vec(),
            },
        ],
    );
    s.assert_dropped(client, 41006, "overlapping fragments");
    assert!(s.drops(ParseDrop::FragmentOverlap) >= overlaps + 2);

    // Out of order: the last fragment first, then the first.
    let without_first = s.drops(ParseDrop::FragmentWithoutFirst);
    let segment = syn_to(client, other, 41007, 25);
    let mut pieces = split(&segment, &[40]);
    pieces.reverse();
    send_fragments(&raw, client, other, 7, &pieces);
    s.assert_dropped(client, 41007, "fragments out of order");
    assert!(s.drops(ParseDrop::FragmentWithoutFirst) > without_first);

    // The limits count what reaches the protected server (here its
    // stand-in, the engine): the whole SYN, not the fragmented one.
    assert_eq!(s.embryonic(), 1);
    assert!(!s.server_holds(client, 41005));
}

#[test]
fn ipv6_syns_behind_fragment_headers_or_long_chains_never_reach_the_server() {
    let mut s = Setup::new("evfrag6");
    let raw = RawIp::new(&s.lab().client, true).unwrap();
    let (client, server) = (IpAddr::from(CLIENT_V6), IpAddr::from(SERVER_V6));
    // A SYN behind `dstopts` Destination Options headers.
    let behind = |sport, dport, dstopts: usize| {
        let segment = syn_to(client, server, sport, dport);
        let mut packet = ipv6(
            CLIENT_V6,
            SERVER_V6,
            if dstopts == 0 { TCP } else { IPV6_DSTOPTS },
            dstopts * 8 + segment.len(),
        );
        for i in 0..dstopts {
            packet.extend(ipv6_dstopts(if i + 1 == dstopts {
                TCP
            } else {
                IPV6_DSTOPTS
            }));
        }
        packet.extend(segment);
        packet
    };

    // Without the inspector the server delivers a SYN behind seven
    // extension headers, and one behind a Fragment header.
    s.assert_reaches_without_inspector(
        &raw,
        &[behind(42000, OTHER_PORT, 7)],
        server,
        client,
        42000,
        "seven extension headers",
    );
    let segment = syn_to(client, server, 41999, 25);
    s.assert_reaches_without_inspector(
        &raw,
        &fragments(client, server, TCP, 1, &split(&segment, &[40])),
        server,
        client,
        41999,
        "fragmented SYN to port 25",
    );
    s.start();

    s.first_at_engine(&raw, &behind(42001, 25, 0), server, client, 42001);
    raw.send(&behind(42002, 25, 2), server).unwrap();
    s.assert_at_engine(client, 42002, "SYN behind two extension headers");
    // Six extension headers, the most the classifier walks: the server
    // delivers them (the control for the chain below).
    raw.send(&behind(42003, OTHER_PORT, 6), server).unwrap();
    s.assert_at_server(client, 42003, "SYN behind six extension headers");
    let segment = syn_to(client, server, 42004, OTHER_PORT);
    send_fragments(&raw, client, server, 4, &split(&segment, &[40]));
    s.assert_at_server(client, 42004, "fragmented SYN to port 2525");

    let chains = s.drops(ParseDrop::UnparsableExtHeaders);
    raw.send(&behind(42005, 25, 7), server).unwrap();
    s.assert_dropped(client, 42005, "SYN behind seven extension headers");
    assert!(s.drops(ParseDrop::UnparsableExtHeaders) > chains);

    let tcp_fragments = s.drops(ParseDrop::TcpFragment);
    let segment = syn_to(client, server, 42006, 25);
    send_fragments(&raw, client, server, 6, &split(&segment, &[40]));
    s.assert_dropped(client, 42006, "SYN behind a Fragment header");
    assert!(s.drops(ParseDrop::TcpFragment) >= tcp_fragments + 2);

    // An atomic fragment (offset 0, no more: RFC 6946) is a whole packet.
    let segment = syn_to(client, server, 42007, 25);
    let frag = ipv6_fragment_header(TCP, 0, false, 7);
    let packet = frame(&[
        &ipv6(CLIENT_V6, SERVER_V6, IPV6_FRAGMENT, 8 + segment.len()),
        &frag,
        &segment,
    ]);
    raw.send(&packet, server).unwrap();
    s.assert_at_engine(client, 42007, "atomic fragment");
}

/// Priority tags (VLAN id 0) need no VLAN device: Linux strips any number
/// of them and delivers what is inside (this kernel has no 802.1Q support
/// at all, and still does), so they are the VLAN and QinQ frames a client
/// can send to the gateway.
#[test]
fn vlan_and_qinq_frames_reach_the_engine_or_are_dropped() {
    let mut s = Setup::new("evvlan");
    let (gw, client_mac) = (
        mac(&s.lab().gateway, OUTSIDE).unwrap(),
        mac(&s.lab().client, "eth0").unwrap(),
    );
    let raw = RawEthernet::new(&s.lab().client, "eth0").unwrap();
    let send = |tags: &[u16], packet: &[u8]| {
        let mut f = frame(&[&ethernet_vid(tags, 0, ETH_P_IP), packet]);
        f[..6].copy_from_slice(&gw);
        f[6..12].copy_from_slice(&client_mac);
        raw.send(&f).unwrap();
    };
    let syn_packet = |dst: Ipv4Addr, sport, dport| {
        ipv4_packet(
            CLIENT_V4,
            dst,
            TCP,
            &syn_to(CLIENT_V4.into(), dst.into(), sport, dport),
        )
    };
    let client = IpAddr::from(CLIENT_V4);
    const THREE: [u16; 3] = [ETH_P_8021AD, ETH_P_8021Q, ETH_P_8021Q];

    // Without the inspector, even three tags reach the server.
    send(&THREE, &syn_packet(MAIL_GATEWAY_V4, 43000, OTHER_PORT));
    s.assert_at_server(client, 43000, "three tags, no inspector");
    s.start();

    send(
        &[ETH_P_8021Q],
        &syn_packet(MAIL_GATEWAY_V4, 43001, OTHER_PORT),
    );
    s.assert_at_server(client, 43001, "VLAN SYN to port 2525");
    send(&[ETH_P_8021Q], &syn_packet(SERVER_V4, 43002, 25));
    s.assert_at_engine(client, 43002, "VLAN SYN to port 25");
    send(
        &[ETH_P_8021AD, ETH_P_8021Q],
        &syn_packet(SERVER_V4, 43003, 25),
    );
    s.assert_at_engine(client, 43003, "QinQ SYN to port 25");

    let tcp_fragments = s.drops(ParseDrop::TcpFragment);
    let segment = syn_to(client, MAIL_GATEWAY_V4.into(), 43004, 25);
    for packet in fragments(
        client,
        MAIL_GATEWAY_V4.into(),
        TCP,
        4,
        &split(&segment, &[40]),
    ) {
        send(&[ETH_P_8021AD, ETH_P_8021Q], &packet);
    }
    s.assert_dropped(client, 43004, "fragmented SYN in QinQ");
    assert!(s.drops(ParseDrop::TcpFragment) >= tcp_fragments + 2);

    // A third tag: not looked into, so dropped (it could be SMTP).
    let encapsulations = s.drops(ParseDrop::UnparsableEncapsulation);
    send(&THREE, &syn_packet(SERVER_V4, 43005, 25));
    send(&THREE, &syn_packet(MAIL_GATEWAY_V4, 43006, OTHER_PORT));
    s.assert_dropped(client, 43005, "three VLAN tags");
    s.assert_dropped(client, 43006, "three VLAN tags");
    assert_eq!(
        s.drops(ParseDrop::UnparsableEncapsulation),
        encapsulations + 2
    );
    // The limits counted the two SYNs to the protected server that got
    // through, both held by the engine.
    assert_eq!(s.embryonic(), 2);
}

#[test]
fn fragmented_udp_still_arrives() {
    let s = Setup::started("evudp");
    let lab = s.lab();
    for (server, port) in [
        (IpAddr::from(SERVER_V4), 5353),
        (IpAddr::from(MAIL_GATEWAY_V4), 5354),
        (IpAddr::from(SERVER_V6), 5355),
    ] {
        let bind = SocketAddr::new(server, port);
        let receiver = lab
            .server
            .run(move || UdpSocket::bind(bind))
            .unwrap()
            .unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let from = SocketAddr::new(
            if server.is_ipv4() {
                CLIENT_V4.into()
            } else {
                CLIENT_V6.into()
            },
            0,
        );
        let sender = lab
            .client
            .run(move || UdpSocket::bind(from))
            .unwrap()
            .unwrap();
        // 3,000 bytes over a 1,500-byte MTU: the client's kernel sends it
        // in three fragments.
        let datagram: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        sender.send_to(&datagram, bind).unwrap();
        let mut buf = vec![0u8; 4096];
        let (n, _) = receiver
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("the datagram to {bind} did not arrive: {e}"));
        assert_eq!(&buf[..n], &datagram[..], "to {bind}");
    }
    let json = stats_json(s.f.pins.path());
    let dropped: u64 = json["parse_drops"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(dropped, 0, "{json}");
}
