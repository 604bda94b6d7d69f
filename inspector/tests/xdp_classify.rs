//! The classifier under BPF_PROG_TEST_RUN: crafted frames of every shape,
//! each run through the XDP program and then the TC steering program (the
//! order of the real path), checked for their verdict (the two must
//! agree), for the one class counter the packet moved, and for the reason
//! a drop was counted under. Needs root (loads BPF programs); fails, never
//! skips, without it.

mod support;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use aya::{
    Ebpf,
    programs::{SchedClassifier, TestRun, TestRunOptions},
};
use inspector::{
    config::{FailMode, PacketPolicy, Policy, Unparsable, parse_network},
    kernel::{
        bpffs, classify,
        counters::{ClassStats, ParseDrops},
        exempt::{ExemptTable, Origin},
        flow_marks::FlowMarks,
        limits, loader, steer,
    },
};
use inspector_common::{Class, ParseDrop, programs};
use inspector_lab::packets::*;
use support::PinDir;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 25);
const OTHER: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 30);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2);
const SERVER6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 0x25);

/// What the programs did with one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    class: Class,
    /// `None`: passed by both; else dropped by both, for this reason.
    drop: Option<ParseDrop>,
}

/// The loaded programs with their own pinned maps.
struct Classifier {
    ebpf: Ebpf,
    pins: PinDir,
}

impl Classifier {
    fn new(test: &str) -> Self {
        let pins = PinDir::new(test);
        let mut ebpf = loader::load(pins.path()).expect("loading the classifier");
        steer::load(&mut ebpf, FailMode::Open).expect("loading the steering program");
        Self { ebpf, pins }
    }

    fn exempt(&self, network: &str) {
        let net = parse_network(network).unwrap();
        ExemptTable::open(self.pins.path())
            .unwrap()
            .add(&net, Origin::Live)
            .unwrap();
    }

    /// Makes `addrs` protected servers (no limits: only "protected").
    fn protect(&self, addrs: &[IpAddr]) {
        self.protect_with(addrs, "");
    }

    /// Makes `addrs` protected servers, each with the policy lines `limits`.
    fn protect_with(&self, addrs: &[IpAddr], limits: &str) {
        let text: String = addrs
            .iter()
            .map(|a| format!("[[server]]\naddress = \"{a}\"\n{limits}\n"))
            .collect();
        let policy = Policy::parse(Path::new("(test)"), &text).unwrap();
        limits::apply_policy(self.pins.path(), &policy.servers).unwrap();
    }

    fn unparsable(&mut self, unparsable: Unparsable) {
        classify::configure(&mut self.ebpf, &PacketPolicy { unparsable }, &[25]).unwrap();
    }

    /// The policy's `[esmtp] ports`.
    fn ports(&mut self, ports: &[u16]) {
        classify::configure(&mut self.ebpf, &PacketPolicy::default(), ports).unwrap();
    }

    fn xdp(&mut self, frame: &[u8]) -> u32 {
        let xdp = loader::xdp_program(&mut self.ebpf).unwrap();
        xdp.test_run(TestRunOptions {
            data_in: Some(frame),
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN of XDP")
        .return_value
    }

    /// `None` when the kernel refuses the frame as a test input: it wants
    /// a whole IP header after an IP EtherType (`bpf_prog_test_run_skb`).
    fn tc(&mut self, frame: &[u8]) -> Option<u32> {
        let tc: &mut SchedClassifier = self
            .ebpf
            .program_mut(programs::TC_STEER)
            .unwrap()
            .try_into()
            .unwrap();
        match tc.test_run(TestRunOptions {
            data_in: Some(frame),
            ..Default::default()
        }) {
            Ok(result) => Some(result.return_value),
            Err(e) => {
                let ip_header = match u16::from_be_bytes([frame[12], frame[13]]) {
                    ETH_P_IP => 20,
                    ETH_P_IPV6 => 40,
                    _ => 0,
                };
                assert!(
                    frame.len() < 14 + ip_header,
                    "BPF_PROG_TEST_RUN of TC ({} bytes): {e}",
                    frame.len()
                );
                None
            }
        }
    }

    fn counters(&self) -> (ClassStats, ParseDrops) {
        (
            ClassStats::read(self.pins.path()).unwrap(),
            ParseDrops::read(self.pins.path()).unwrap(),
        )
    }

    /// Runs `frame` through XDP, then TC. Asserts that they agree (pass and
    /// not marked, or drop and drop), that exactly one class counted the
    /// packet and its bytes, and that a drop was counted once by each
    /// program under one reason.
    fn run(&mut self, frame: &[u8]) -> Seen {
        let before = self.counters();
        let xdp = self.xdp(frame);
        let middle = self.counters();
        let tc = self.tc(frame);
        let after = self.counters();
        // (A frame too short for TC's test input is judged by XDP alone.)
        let tc_agrees = match tc {
            Some(tc) => matches!((xdp, tc), (XDP_PASS, TC_ACT_OK) | (XDP_DROP, TC_ACT_SHOT)),
            None => true,
        };
        assert!(
            tc_agrees,
            "XDP returned {xdp} and TC {tc:?}: they must agree"
        );
        let moved: Vec<Class> = Class::ALL
            .into_iter()
            .filter(|&c| middle.0.get(c) != before.0.get(c))
            .collect();
        assert_eq!(
            moved.len(),
            1,
            "exactly one class counts a packet: {moved:?}"
        );
        let class = moved[0];
        assert_eq!(middle.0.get(class).packets, before.0.get(class).packets + 1);
        assert_eq!(
            middle.0.get(class).bytes,
            before.0.get(class).bytes + frame.len() as u64
        );
        assert_eq!(after.0, middle.0, "TC counts no class");
        let reason = |a: &ParseDrops, b: &ParseDrops| -> Option<ParseDrop> {
            let moved: Vec<ParseDrop> = ParseDrop::ALL
                .into_iter()
                .filter(|&r| a.get(r) != b.get(r))
                .collect();
            assert!(moved.len() <= 1, "one reason per drop: {moved:?}");
            let r = *moved.first()?;
            assert_eq!(b.get(r), a.get(r) + 1);
            Some(r)
        };
        let drop = reason(&before.1, &middle.1);
        assert_eq!(drop.is_some(), xdp == XDP_DROP, "a drop is counted");
        if tc.is_some() {
            assert_eq!(
                reason(&middle.1, &after.1),
                drop,
                "TC drops it for the same reason"
            );
        }
        Seen { class, drop }
    }

    /// Runs `frame`; asserts it passed; returns its class.
    fn classify(&mut self, frame: &[u8]) -> Class {
        let seen = self.run(frame);
        assert_eq!(seen.drop, None, "passed: {seen:?}");
        seen.class
    }

    /// Runs `frame`; asserts it was dropped; returns its class and reason.
    fn refuse(&mut self, frame: &[u8]) -> (Class, ParseDrop) {
        let seen = self.run(frame);
        (seen.class, seen.drop.expect("dropped"))
    }
}

fn eth4(parts: &[&[u8]]) -> Vec<u8> {
    [&ethernet(&[], ETH_P_IP)[..], &parts.concat()].concat()
}

fn eth6(parts: &[&[u8]]) -> Vec<u8> {
    [&ethernet(&[], ETH_P_IPV6)[..], &parts.concat()].concat()
}

/// Each piece of `payload` as a frame: IPv4 fragments of datagram `id`.
fn frags4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, id: u32, pieces: &[Piece]) -> Vec<Vec<u8>> {
    fragments(src.into(), dst.into(), protocol, id, pieces)
        .iter()
        .map(|p| eth4(&[p]))
        .collect()
}

fn frags6(src: Ipv6Addr, dst: Ipv6Addr, protocol: u8, id: u32, pieces: &[Piece]) -> Vec<Vec<u8>> {
    fragments(src.into(), dst.into(), protocol, id, pieces)
        .iter()
        .map(|p| eth6(&[p]))
        .collect()
}

/// A SYN from CLIENT to `dst`:`port` with a 40-byte header and 16 bytes of
/// data, so that a first fragment of 40 or 48 bytes holds the whole header.
fn syn4(dst: Ipv4Addr, port: u16) -> Vec<u8> {
    syn(CLIENT.into(), dst.into(), (40000, port), &[0x55; 16])
}

fn syn6(dst: Ipv6Addr, port: u16) -> Vec<u8> {
    syn(CLIENT6.into(), dst.into(), (40000, port), &[0x55; 16])
}

#[test]
fn ipv4_smtp_is_inspected_and_other_traffic_passes() {
    let mut c = Classifier::new("ipv4");
    assert_eq!(c.classify(&v4_tcp(CLIENT, SERVER, 25)), Class::Inspect);
    assert_eq!(c.classify(&v4_tcp(CLIENT, SERVER, 587)), Class::Pass);
    assert_eq!(c.classify(&v4_tcp(SERVER, CLIENT, 40000)), Class::Pass);
    let udp25 = eth4(&[&ipv4(CLIENT, SERVER, UDP, 8), &udp(25)]);
    assert_eq!(c.classify(&udp25), Class::Pass);
    let icmp = eth4(&[&ipv4(CLIENT, SERVER, ICMP, 8), &[8, 0, 0, 0, 0, 0, 0, 0]]);
    assert_eq!(c.classify(&icmp), Class::Pass);
    let arp = frame(&[&ethernet(&[], ETH_P_ARP), &[0u8; 28]]);
    assert_eq!(c.classify(&arp), Class::Pass);
}

#[test]
fn ipv4_options_and_tcp_options_are_skipped() {
    let mut c = Classifier::new("options");
    // IHL 6: one 4-byte option (NOPs); TCP data offset 6: one option word.
    let mut ip = ipv4(CLIENT, SERVER, TCP, 28);
    ip[0] = 0x46;
    ip.extend([1, 1, 1, 1]);
    let mut t = tcp(25);
    t[12] = 0x60;
    t.extend([1, 1, 1, 1]);
    assert_eq!(c.classify(&eth4(&[&ip, &t])), Class::Inspect);
}

/// A frame padded to the Ethernet minimum (60 bytes) is parsed by its IP
/// length: padding is never read as a header.
#[test]
fn ethernet_padding_is_not_read_as_a_header() {
    let mut c = Classifier::new("padding");
    let mut padded = v4_tcp(CLIENT, SERVER, 25);
    padded.resize(60, 0);
    assert_eq!(c.classify(&padded), Class::Inspect);
    // The IP length leaves out the TCP options the padding would supply.
    let mut t = tcp(25);
    t[12] = 0x60;
    let mut short = eth4(&[&ipv4(CLIENT, SERVER, TCP, 20), &t]);
    short.resize(64, 1);
    assert_eq!(
        c.refuse(&short),
        (Class::Malformed, ParseDrop::UnparsableTruncated)
    );
    // IPv6 likewise, by its payload length.
    let mut t6 = eth6(&[&ipv6(CLIENT6, SERVER6, TCP, 16), &tcp(25)]);
    t6.resize(80, 0);
    assert_eq!(
        c.refuse(&t6),
        (Class::Malformed, ParseDrop::UnparsableTruncated)
    );
}

#[test]
fn ipv6_smtp_is_inspected_through_extension_headers() {
    let mut c = Classifier::new("ipv6");
    assert_eq!(c.classify(&v6_tcp(CLIENT6, SERVER6, 25)), Class::Inspect);
    assert_eq!(c.classify(&v6_tcp(CLIENT6, SERVER6, 443)), Class::Pass);
    // Hop-by-hop (8 bytes, next = destination options), destination options
    // (8 bytes, next = TCP).
    let hbh = [60u8, 0, 1, 4, 0, 0, 0, 0];
    let f = eth6(&[
        &ipv6(CLIENT6, SERVER6, 0, 36),
        &hbh,
        &ipv6_dstopts(TCP),
        &tcp(25),
    ]);
    assert_eq!(c.classify(&f), Class::Inspect);
    // Six extension headers, the most RFC 8200's order allows.
    let mut six = ipv6(CLIENT6, SERVER6, IPV6_DSTOPTS, 6 * 8 + 20);
    for i in 0..6 {
        six.extend(ipv6_dstopts(if i == 5 { TCP } else { IPV6_DSTOPTS }));
    }
    assert_eq!(c.classify(&eth6(&[&six, &tcp(25)])), Class::Inspect);
    // An atomic fragment (offset 0, no more) is a whole packet (RFC 6946).
    let atomic = ipv6_fragment_header(TCP, 0, false, 7);
    let f = eth6(&[
        &ipv6(CLIENT6, SERVER6, IPV6_FRAGMENT, 28),
        &atomic,
        &tcp(25),
    ]);
    assert_eq!(c.classify(&f), Class::Inspect);
    let udp = eth6(&[&ipv6(CLIENT6, SERVER6, UDP, 8), &udp(25)]);
    assert_eq!(c.classify(&udp), Class::Pass);
    // ESP and No Next Header: not TCP.
    for next in [50, 59] {
        let f = eth6(&[&ipv6(CLIENT6, SERVER6, next, 8), &[0u8; 8]]);
        assert_eq!(c.classify(&f), Class::Pass, "next header {next}");
    }
}

/// `[esmtp] ports`: a listed port other than 25 is inspected, IPv4 and
/// IPv6, whole or fragmented; an unlisted one passes; a list without 25
/// leaves port 25 alone.
#[test]
fn listed_ports_are_inspected_and_others_pass() {
    let mut c = Classifier::new("ports");
    c.ports(&[25, 587]);
    for port in [25, 587] {
        assert_eq!(
            c.classify(&v4_tcp(CLIENT, OTHER, port)),
            Class::Inspect,
            "{port}"
        );
        assert_eq!(
            c.classify(&v6_tcp(CLIENT6, SERVER6, port)),
            Class::Inspect,
            "{port}"
        );
    }
    assert_eq!(c.classify(&v4_tcp(CLIENT, OTHER, 2525)), Class::Pass);
    assert_eq!(c.classify(&v6_tcp(CLIENT6, SERVER6, 2525)), Class::Pass);
    // The server's answers from 587 are not to an inspected port.
    assert_eq!(c.classify(&v4_tcp(OTHER, CLIENT, 40000)), Class::Pass);
    // A TCP fragment to 587 is dropped as one to 25 is; truncated TCP to
    // it could be SMTP and is dropped too (its ports are read).
    let to_587 = frags4(CLIENT, OTHER, TCP, 11, &split(&syn4(OTHER, 587), &[40]));
    assert_eq!(
        c.refuse(&to_587[0]),
        (Class::Inspect, ParseDrop::TcpFragment)
    );
    assert_eq!(
        c.refuse(&to_587[1]),
        (Class::Inspect, ParseDrop::TcpFragment)
    );
    let v6 = frags6(
        CLIENT6,
        SERVER6,
        TCP,
        12,
        &split(&syn6(SERVER6, 587), &[40]),
    );
    assert_eq!(c.refuse(&v6[0]), (Class::Inspect, ParseDrop::TcpFragment));
    let to_2525 = frags4(CLIENT, OTHER, TCP, 13, &split(&syn4(OTHER, 2525), &[40]));
    assert_eq!(c.classify(&to_2525[0]), Class::Pass);
    // Only the submission port: port 25 passes.
    c.ports(&[587]);
    assert_eq!(c.classify(&v4_tcp(CLIENT, OTHER, 25)), Class::Pass);
    assert_eq!(c.classify(&v6_tcp(CLIENT6, SERVER6, 25)), Class::Pass);
    assert_eq!(c.classify(&v4_tcp(CLIENT, OTHER, 587)), Class::Inspect);
    assert_eq!(c.classify(&v6_tcp(CLIENT6, SERVER6, 587)), Class::Inspect);
    // Port 0 never matches an unused slot.
    assert_eq!(c.classify(&v4_tcp(CLIENT, OTHER, 0)), Class::Pass);
    // Exempt hosts stay exempt on every port.
    c.exempt("198.18.1.30/32");
    assert_eq!(c.classify(&v4_tcp(CLIENT, OTHER, 587)), Class::Exempt);
}

#[test]
fn vlan_tagged_frames_are_parsed() {
    let mut c = Classifier::new("vlan");
    let ip = ipv4(CLIENT, SERVER, TCP, 20);
    let t = tcp(25);
    let one = frame(&[&ethernet(&[ETH_P_8021Q], ETH_P_IP), &ip, &t]);
    assert_eq!(c.classify(&one), Class::Inspect);
    let qinq = frame(&[&ethernet(&[ETH_P_8021AD, ETH_P_8021Q], ETH_P_IP), &ip, &t]);
    assert_eq!(c.classify(&qinq), Class::Inspect);
    let v6 = frame(&[
        &ethernet(&[ETH_P_8021Q], ETH_P_IPV6),
        &ipv6(CLIENT6, SERVER6, TCP, 20),
        &t,
    ]);
    assert_eq!(c.classify(&v6), Class::Inspect);
    // A third tag, MPLS, a PPPoE session: encapsulations the classifier
    // does not look into, which could carry SMTP.
    let three = frame(&[
        &ethernet(&[ETH_P_8021Q, ETH_P_8021Q, ETH_P_8021Q], ETH_P_IP),
        &ip,
        &t,
    ]);
    for f in [
        three,
        frame(&[&ethernet(&[], 0x8847), &[0, 0, 0x11, 64], &ip, &t]),
        frame(&[
            &ethernet(&[], 0x8864),
            &[0x11, 0, 0, 1, 0, 42, 0, 0x21],
            &ip,
            &t,
        ]),
    ] {
        assert_eq!(
            c.refuse(&f),
            (Class::Malformed, ParseDrop::UnparsableEncapsulation)
        );
    }
    // Other EtherTypes are not IP and not ours to judge.
    let lldp = frame(&[&ethernet(&[], 0x88cc), &[0u8; 32]]);
    assert_eq!(c.classify(&lldp), Class::Pass);
}

#[test]
fn frames_cut_short_are_dropped_when_they_could_be_smtp() {
    let mut c = Classifier::new("truncated");
    let whole = v4_tcp(CLIENT, SERVER, 25);
    // Cut inside the IPv4 header, at its end, and inside the TCP header
    // (the kernel refuses test frames shorter than an Ethernet header).
    for len in [14, 20, 33, 34, 40, 53] {
        assert_eq!(
            c.refuse(&whole[..len]),
            (Class::Malformed, ParseDrop::UnparsableTruncated),
            "IPv4 frame cut at {len}"
        );
    }
    let whole6 = v6_tcp(CLIENT6, SERVER6, 25);
    for len in [14, 30, 53, 54, 60, 73] {
        assert_eq!(
            c.refuse(&whole6[..len]),
            (Class::Malformed, ParseDrop::UnparsableTruncated),
            "IPv6 frame cut at {len}"
        );
    }
    let vlan = frame(&[
        &ethernet(&[ETH_P_8021Q], ETH_P_IP),
        &ipv4(CLIENT, SERVER, TCP, 20),
        &tcp(25),
    ]);
    assert_eq!(
        c.refuse(&vlan[..16]),
        (Class::Malformed, ParseDrop::UnparsableTruncated),
        "cut inside the VLAN tag"
    );
    let hbh = [TCP, 0, 1, 4, 0, 0, 0, 0];
    let ext = eth6(&[&ipv6(CLIENT6, SERVER6, 0, 28), &hbh, &tcp(25)]);
    assert_eq!(
        c.refuse(&ext[..55]),
        (Class::Malformed, ParseDrop::UnparsableTruncated),
        "cut inside an extension header: the protocol could be TCP"
    );
    // UDP cut short cannot be TCP to port 25: passed, counted malformed.
    let udp = eth4(&[&ipv4(CLIENT, SERVER, UDP, 8), &udp(53)]);
    assert_eq!(c.classify(&udp[..38]), Class::Malformed, "cut inside UDP");
    // ... unless it goes to a protected server.
    c.protect(&[SERVER.into()]);
    assert_eq!(
        c.refuse(&udp[..38]),
        (Class::Malformed, ParseDrop::UnparsableTruncated)
    );
}

#[test]
fn impossible_header_values_are_dropped() {
    let mut c = Classifier::new("invalid");
    let invalid = (Class::Malformed, ParseDrop::UnparsableInvalid);
    let whole = v4_tcp(CLIENT, SERVER, 25);
    let mut bad_version = whole.clone();
    bad_version[14] = 0x55;
    assert_eq!(c.refuse(&bad_version), invalid);
    let mut short_ihl = whole.clone();
    short_ihl[14] = 0x44;
    assert_eq!(c.refuse(&short_ihl), invalid);
    let mut ihl_past_end = whole.clone();
    ihl_past_end[14] = 0x4f; // 60-byte header in a 40-byte packet
    assert_eq!(c.refuse(&ihl_past_end), invalid);
    let mut total_too_small = whole.clone();
    total_too_small[16..18].copy_from_slice(&10u16.to_be_bytes());
    assert_eq!(c.refuse(&total_too_small), invalid);
    let mut doff_small = whole.clone();
    doff_small[14 + 20 + 12] = 0x40;
    assert_eq!(c.refuse(&doff_small), invalid);
    let mut doff_past_end = whole.clone();
    doff_past_end[14 + 20 + 12] = 0xf0; // 60-byte TCP header in 20 bytes
    assert_eq!(
        c.refuse(&doff_past_end),
        (Class::Malformed, ParseDrop::UnparsableTruncated)
    );
    let mut bad_v6 = v6_tcp(CLIENT6, SERVER6, 25);
    bad_v6[14] = 0x40;
    assert_eq!(c.refuse(&bad_v6), invalid);
    // More extension headers than the classifier walks: the server would
    // deliver it, so it could be SMTP.
    let mut f = ipv6(CLIENT6, SERVER6, IPV6_DSTOPTS, 7 * 8 + 20);
    for i in 0..7 {
        f.extend(ipv6_dstopts(if i == 6 { TCP } else { IPV6_DSTOPTS }));
    }
    assert_eq!(
        c.refuse(&eth6(&[&f, &tcp(25)])),
        (Class::Malformed, ParseDrop::UnparsableExtHeaders)
    );
}

#[test]
fn unparsable_packets_pass_out_of_scope_or_when_the_policy_says_pass() {
    let mut c = Classifier::new("unparsable");
    let gateway = Ipv4Addr::new(198, 18, 1, 26);
    c.exempt("198.18.1.26/32");
    // From an exempt host, to a server that is not protected: never
    // inspected anyway.
    let cut = v4_tcp(gateway, CLIENT, 25);
    assert_eq!(c.classify(&cut[..40]), Class::Malformed);
    // To a protected server, exempt or not.
    c.protect(&[CLIENT.into()]);
    assert_eq!(
        c.refuse(&cut[..40]),
        (Class::Malformed, ParseDrop::UnparsableTruncated)
    );

    c.unparsable(Unparsable::Pass);
    let whole = v4_tcp(CLIENT, SERVER, 25);
    assert_eq!(c.classify(&whole[..40]), Class::Malformed);
    let mut seven = ipv6(CLIENT6, SERVER6, IPV6_DSTOPTS, 7 * 8 + 20);
    for i in 0..7 {
        seven.extend(ipv6_dstopts(if i == 6 { TCP } else { IPV6_DSTOPTS }));
    }
    assert_eq!(c.classify(&eth6(&[&seven, &tcp(25)])), Class::Malformed);
    // The fragment rules are no part of the setting.
    let tiny = &frags4(CLIENT, SERVER, TCP, 1, &split(&syn4(SERVER, 25), &[8]))[0];
    assert_eq!(c.refuse(tiny), (Class::Malformed, ParseDrop::TinyFragment));

    c.unparsable(Unparsable::Drop);
    assert_eq!(
        c.refuse(&whole[..40]),
        (Class::Malformed, ParseDrop::UnparsableTruncated)
    );
}

#[test]
fn tcp_fragments_to_smtp_or_protected_servers_are_dropped() {
    let mut c = Classifier::new("tcpfrag");
    c.protect(&[SERVER.into(), SERVER6.into()]);
    // A first fragment with the whole header (40 bytes), then the rest.
    let to_smtp = frags4(CLIENT, OTHER, TCP, 1, &split(&syn4(OTHER, 25), &[40]));
    assert_eq!(
        c.refuse(&to_smtp[0]),
        (Class::Inspect, ParseDrop::TcpFragment)
    );
    assert_eq!(
        c.refuse(&to_smtp[1]),
        (Class::Inspect, ParseDrop::TcpFragment),
        "a later fragment gets its datagram's class and verdict"
    );
    // Any TCP port of a protected server: the limits protect the server.
    let to_protected = frags4(CLIENT, SERVER, TCP, 2, &split(&syn4(SERVER, 443), &[48]));
    assert_eq!(
        c.refuse(&to_protected[0]),
        (Class::Pass, ParseDrop::TcpFragment)
    );
    assert_eq!(
        c.refuse(&to_protected[1]),
        (Class::Pass, ParseDrop::TcpFragment)
    );
    // Other TCP fragments pass, with their datagram's class.
    let other = frags4(CLIENT, OTHER, TCP, 3, &split(&syn4(OTHER, 443), &[40]));
    assert_eq!(c.classify(&other[0]), Class::Pass);
    assert_eq!(c.classify(&other[1]), Class::Pass);
    // IPv6: a SYN behind a Fragment header.
    let v6 = frags6(CLIENT6, SERVER6, TCP, 4, &split(&syn6(SERVER6, 25), &[40]));
    assert_eq!(c.refuse(&v6[0]), (Class::Inspect, ParseDrop::TcpFragment));
    assert_eq!(c.refuse(&v6[1]), (Class::Inspect, ParseDrop::TcpFragment));
    // An exempt host's TCP fragments to a server that is not protected:
    // never inspected, so passed.
    c.exempt("198.18.1.30/32");
    let exempt = frags4(CLIENT, OTHER, TCP, 5, &split(&syn4(OTHER, 25), &[40]));
    assert_eq!(c.classify(&exempt[0]), Class::Exempt);
    assert_eq!(c.classify(&exempt[1]), Class::Exempt);
}

/// RFC 1858's tiny fragment: the first fragment stops before the end of the
/// TCP header, so the flags (or the ports) are in the second.
#[test]
fn tiny_first_fragments_are_dropped() {
    let mut c = Classifier::new("tiny");
    let tiny = (Class::Malformed, ParseDrop::TinyFragment);
    let segment = syn4(OTHER, 443);
    // 8 bytes: the ports only; 16: not the flags; 32: not all the options.
    for (id, cut) in [(1, 8), (2, 16), (3, 32)] {
        let f = frags4(CLIENT, OTHER, TCP, id, &split(&segment, &[cut]));
        assert_eq!(c.refuse(&f[0]), tiny, "first fragment of {cut} bytes");
        assert_eq!(
            c.refuse(&f[1]),
            (Class::Pass, ParseDrop::FragmentWithoutFirst),
            "its second fragment"
        );
    }
    let f = frags6(CLIENT6, SERVER6, TCP, 4, &split(&syn6(SERVER6, 25), &[16]));
    assert_eq!(c.refuse(&f[0]), tiny);
    // IPv6: the header chain itself must be in the first fragment (RFC 7112).
    let mut chain = ipv6_dstopts(TCP);
    chain.extend(&syn6(SERVER6, 25));
    let f = frags6(CLIENT6, SERVER6, IPV6_DSTOPTS, 5, &split(&chain, &[8]));
    assert_eq!(c.refuse(&f[0]), tiny);
}

#[test]
fn overlapping_fragments_drop_their_datagram() {
    let mut c = Classifier::new("overlap");
    let overlap = ParseDrop::FragmentOverlap;
    let segment = syn4(OTHER, 443);
    // A first fragment that passes, then a piece over its bytes 8.. (RFC
    // 1858: FO = 1 rewrites the flags), then the rest.
    let f = frags4(
        CLIENT,
        OTHER,
        TCP,
        1,
        &[
            Piece {
                offset: 0,
                more: true,
                data: segment[..40].to_vec(),
            },
            Piece {
                offset: 8,
                more: true,
                data: vec![0; 32],
            },
            Piece {
                offset: 40,
                more: false,
                data: segment[40..].to_vec(),
            },
        ],
    );
    assert_eq!(c.classify(&f[0]), Class::Pass);
    assert_eq!(c.refuse(&f[1]), (Class::Pass, overlap));
    assert_eq!(
        c.refuse(&f[2]),
        (Class::Pass, overlap),
        "the datagram is dropped"
    );
    // RFC 3128: a second first fragment, shorter, that rewrites the ports.
    let mut to_smtp = syn4(OTHER, 25);
    to_smtp.truncate(8);
    let f = frags4(
        CLIENT,
        OTHER,
        TCP,
        2,
        &[
            Piece {
                offset: 0,
                more: true,
                data: segment[..40].to_vec(),
            },
            Piece {
                offset: 0,
                more: true,
                data: to_smtp,
            },
            Piece {
                offset: 40,
                more: false,
                data: segment[40..].to_vec(),
            },
        ],
    );
    assert_eq!(c.classify(&f[0]), Class::Pass);
    assert_eq!(c.refuse(&f[1]).1, ParseDrop::TinyFragment);
    assert_eq!(c.classify(&f[0]), Class::Pass, "an exact duplicate passes");
    // ... or longer than the header: it overlaps, and the datagram goes.
    let header_only = tcp_segment(
        CLIENT.into(),
        OTHER.into(),
        (40000, 25),
        1,
        0x02,
        &[],
        &[0; 4],
    );
    let second = frags4(
        CLIENT,
        OTHER,
        TCP,
        2,
        &[Piece {
            offset: 0,
            more: true,
            data: header_only,
        }],
    );
    assert_eq!(c.refuse(&second[0]), (Class::Inspect, overlap));
    assert_eq!(c.refuse(&f[2]), (Class::Pass, overlap));
    // Over UDP, out of order: a later piece arrives first and overlaps the
    // first fragment when it comes.
    let datagram = [&udp(53)[..], &[7u8; 40]].concat();
    let f = frags4(
        CLIENT,
        OTHER,
        UDP,
        3,
        &[
            Piece {
                offset: 16,
                more: false,
                data: datagram[16..].to_vec(),
            },
            Piece {
                offset: 0,
                more: true,
                data: datagram[..24].to_vec(),
            },
        ],
    );
    assert_eq!(c.classify(&f[0]), Class::Pass);
    assert_eq!(c.refuse(&f[1]), (Class::Pass, overlap));
    // A second first fragment of another length.
    let f = frags4(CLIENT, OTHER, UDP, 4, &split(&datagram, &[24]));
    let shorter = frags4(CLIENT, OTHER, UDP, 4, &split(&datagram, &[16]));
    assert_eq!(c.classify(&f[0]), Class::Pass);
    assert_eq!(c.refuse(&shorter[0]), (Class::Pass, overlap));
    assert_eq!(c.refuse(&f[1]), (Class::Pass, overlap));
}

#[test]
fn later_tcp_fragments_without_their_first_are_dropped() {
    let mut c = Classifier::new("nofirst");
    // Out of order: the second fragment of a SYN to port 25 comes first.
    let f = frags4(CLIENT, OTHER, TCP, 1, &split(&syn4(OTHER, 25), &[40]));
    assert_eq!(
        c.refuse(&f[1]),
        (Class::Pass, ParseDrop::FragmentWithoutFirst)
    );
    assert_eq!(c.refuse(&f[0]), (Class::Inspect, ParseDrop::TcpFragment));
    let f = frags6(CLIENT6, SERVER6, TCP, 2, &split(&syn6(SERVER6, 25), &[40]));
    assert_eq!(
        c.refuse(&f[1]),
        (Class::Pass, ParseDrop::FragmentWithoutFirst)
    );
    // From an exempt host (to a server that is not protected): passed.
    c.exempt("198.18.1.30/32");
    let f = frags4(CLIENT, OTHER, TCP, 3, &split(&syn4(OTHER, 25), &[40]));
    assert_eq!(c.classify(&f[1]), Class::Exempt);
}

#[test]
fn udp_and_other_fragments_pass_with_their_datagram_class() {
    let mut c = Classifier::new("udpfrag");
    let datagram = [&udp(53)[..], &[7u8; 3000]].concat();
    // In order, out of order, twice with the same identification (the
    // first datagram complete before the second).
    for order in [[0, 1, 2], [2, 0, 1], [0, 1, 2]] {
        let f = frags4(CLIENT, OTHER, UDP, 9, &split(&datagram, &[1480, 2960]));
        for i in order {
            assert_eq!(c.classify(&f[i]), Class::Pass, "piece {i} of {order:?}");
        }
    }
    let f = frags6(CLIENT6, SERVER6, UDP, 9, &split(&datagram, &[1448, 2896]));
    for piece in &f {
        assert_eq!(c.classify(piece), Class::Pass);
    }
    let echo = [&[8u8, 0, 0, 0, 0, 1, 0, 1][..], &[0u8; 2000]].concat();
    for piece in frags4(CLIENT, OTHER, ICMP, 10, &split(&echo, &[1480])) {
        assert_eq!(c.classify(&piece), Class::Pass);
    }
    // Even to a protected server (the limits count TCP only).
    c.protect(&[OTHER.into()]);
    for piece in frags4(CLIENT, OTHER, UDP, 11, &split(&datagram, &[1480, 2960])) {
        assert_eq!(c.classify(&piece), Class::Pass);
    }
    c.exempt("198.18.0.2/32");
    let f = frags4(CLIENT, SERVER, UDP, 12, &split(&datagram, &[1480, 2960]));
    assert_eq!(c.classify(&f[0]), Class::Exempt);
    assert_eq!(c.classify(&f[2]), Class::Exempt);
}

#[test]
fn fragments_past_the_largest_datagram_are_dropped() {
    let mut c = Classifier::new("badoffset");
    let f = frags4(
        CLIENT,
        OTHER,
        UDP,
        1,
        &[Piece {
            offset: 65528,
            more: false,
            data: vec![0; 16],
        }],
    );
    assert_eq!(c.refuse(&f[0]), (Class::Pass, ParseDrop::FragmentBadOffset));
}

/// Every evasion class through TC alone, with no XDP before it (an
/// interface without XDP, or a fragment table that lost the datagram):
/// the same verdict as XDP's, from the same rules without state.
#[test]
fn tc_alone_takes_the_decision_xdp_takes() {
    let mut frames: Vec<(&str, Vec<u8>)> = vec![
        ("whole SYN to port 25", v4_tcp(CLIENT, SERVER, 25)),
        ("UDP", eth4(&[&ipv4(CLIENT, SERVER, UDP, 8), &udp(53)])),
        (
            "TCP first fragment to port 25",
            frags4(CLIENT, OTHER, TCP, 1, &split(&syn4(OTHER, 25), &[40])).remove(0),
        ),
        (
            "TCP later fragment",
            frags4(CLIENT, OTHER, TCP, 5, &split(&syn4(OTHER, 25), &[40])).remove(1),
        ),
        (
            "tiny fragment",
            frags4(CLIENT, OTHER, TCP, 2, &split(&syn4(OTHER, 443), &[8])).remove(0),
        ),
        (
            "IPv6 TCP fragment",
            frags6(CLIENT6, SERVER6, TCP, 3, &split(&syn6(SERVER6, 25), &[40])).remove(0),
        ),
        (
            "UDP later fragment",
            frags4(CLIENT, OTHER, UDP, 4, &split(&[0u8; 64], &[32])).remove(1),
        ),
        ("cut short", v4_tcp(CLIENT, SERVER, 25)[..40].to_vec()),
        (
            "three VLAN tags",
            frame(&[
                &ethernet(&[ETH_P_8021Q; 3], ETH_P_IP),
                &ipv4(CLIENT, SERVER, TCP, 20),
                &tcp(25),
            ]),
        ),
    ];
    let mut seven = ipv6(CLIENT6, SERVER6, IPV6_DSTOPTS, 7 * 8 + 20);
    for i in 0..7 {
        seven.extend(ipv6_dstopts(if i == 6 { TCP } else { IPV6_DSTOPTS }));
    }
    frames.push(("seven extension headers", eth6(&[&seven, &tcp(25)])));
    // One classifier runs only XDP, the other only TC; every frame is of a
    // datagram of its own, so no frame sees another's state.
    let (mut xdp_only, mut tc_only) = (Classifier::new("xdpalone"), Classifier::new("tcalone"));
    for (name, f) in &frames {
        let xdp = xdp_only.xdp(f);
        let tc = tc_only.tc(f).expect("a whole IP header");
        let want = if xdp == XDP_PASS {
            TC_ACT_OK
        } else {
            TC_ACT_SHOT
        };
        assert_eq!(tc, want, "{name}: XDP {xdp}, TC alone {tc}");
    }
}

#[test]
fn exemptions_match_source_or_destination() {
    let mut c = Classifier::new("exempt");
    let gateway = Ipv4Addr::new(198, 18, 1, 26);
    assert_eq!(c.classify(&v4_tcp(CLIENT, gateway, 25)), Class::Inspect);
    c.exempt("198.18.1.26/32");
    assert_eq!(
        c.classify(&v4_tcp(CLIENT, gateway, 25)),
        Class::Exempt,
        "to the host"
    );
    assert_eq!(
        c.classify(&v4_tcp(gateway, CLIENT, 25)),
        Class::Exempt,
        "from the host"
    );
    assert_eq!(
        c.classify(&v4_tcp(CLIENT, SERVER, 25)),
        Class::Inspect,
        "other hosts"
    );
    let udp = eth4(&[&ipv4(CLIENT, gateway, UDP, 8), &udp(53)]);
    assert_eq!(
        c.classify(&udp),
        Class::Exempt,
        "exemption is `permit ip`: any protocol"
    );

    c.exempt("2001:2:0:1::/64");
    assert_eq!(
        c.classify(&v6_tcp(CLIENT6, SERVER6, 25)),
        Class::Exempt,
        "network prefix"
    );
    assert_eq!(c.classify(&v6_tcp(SERVER6, CLIENT6, 25)), Class::Exempt);
    let other = Ipv6Addr::new(0x2001, 2, 0, 2, 0, 0, 0, 1);
    assert_eq!(c.classify(&v6_tcp(CLIENT6, other, 25)), Class::Inspect);

    // A malformed packet stays malformed even from an exempt host.
    let cut = v4_tcp(gateway, CLIENT, 25);
    assert_eq!(c.classify(&cut[..40]), Class::Malformed);
}

/// A flow table pinned by a version with smaller entries (before they
/// held the server's next sequence number) is replaced at load, where
/// reusing it would fail the verifier.
#[test]
fn a_flow_table_pinned_with_smaller_entries_is_replaced() {
    let pins = PinDir::new("staleflows");
    let path = pin_flow_table(&pins, 32);
    let _ebpf = loader::load(pins.path()).expect("loading over the old table");
    assert_eq!(
        pinned_info(&path).value_size() as usize,
        size_of::<inspector_common::FlowEntry>()
    );
}

/// What the kernel says of the map pinned at `path`.
fn pinned_info(path: &Path) -> aya::maps::MapInfo {
    aya::maps::MapData::from_pin(path).unwrap().info().unwrap()
}

/// Pins a flow table of 16 flows, with `value`-byte entries, where the
/// loader looks for one in `pins`, as an older version left it; its path.
fn pin_flow_table(pins: &PinDir, value: usize) -> std::path::PathBuf {
    let key = size_of::<inspector_common::FlowKey>().to_string();
    let value = value.to_string();
    let spec = [
        "type", "lru_hash", "key", &key, "value", &value, "entries", "16",
    ];
    pin_map(pins, inspector_common::maps::FLOWS, &spec)
}

/// Pins a mmapable one-element array of `value` bytes where the loader
/// looks for the flow marks in `pins`; its path.
fn pin_flow_marks(pins: &PinDir, value: usize) -> std::path::PathBuf {
    let value = value.to_string();
    let spec = [
        "type", "array", "key", "4", "value", &value, "entries", "1", "flags", "1024",
    ];
    pin_map(pins, inspector_common::maps::FLOW_MARKS, &spec)
}

/// Pins a map `name` made by `bpftool map create` with `spec` in `pins`.
fn pin_map(pins: &PinDir, name: &str, spec: &[&str]) -> std::path::PathBuf {
    let path = pins.path().join(name);
    let made = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(&path)
        .args(spec)
        .args(["name", name])
        .output()
        .expect("running bpftool");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    path
}

/// Intercept counters pinned by a version that counted fewer events are
/// replaced at load (those counts start again from zero): kept, the new
/// events would count nowhere, and reading them would fail.
#[test]
fn intercept_counters_pinned_with_fewer_events_are_replaced() {
    use inspector_common::InterceptEvent;
    let pins = PinDir::new("oldevents");
    let spec = [
        "type",
        "percpu_array",
        "key",
        "4",
        "value",
        "8",
        "entries",
        "5",
    ];
    let path = pin_map(&pins, inspector_common::maps::INTERCEPTS, &spec);
    let old_id = pinned_info(&path).id();
    let _ebpf = loader::load(pins.path()).expect("loading over the old counters");
    let info = pinned_info(&path);
    assert_ne!(info.id(), old_id, "the old counters were kept");
    assert_eq!(info.max_entries(), InterceptEvent::COUNT);
    let stats = limits::LimitStats::read(pins.path(), 0).expect("reading every event");
    assert_eq!(stats.intercepts, [0; InterceptEvent::COUNT as usize]);
}

/// A flow table pinned before the flow marks existed (entries of today's
/// size, no `FLOW_MARKS` beside it) is replaced at load: its flows are
/// marked nowhere, so their SYNs would be taken for new ones.
#[test]
fn a_flow_table_pinned_without_its_marks_is_replaced() {
    let pins = PinDir::new("unmarked");
    let path = pin_flow_table(&pins, size_of::<inspector_common::FlowEntry>());
    let old_id = pinned_info(&path).id();
    let _ebpf = loader::load(pins.path()).expect("loading over the unmarked table");
    assert_ne!(pinned_info(&path).id(), old_id, "the old table was kept");
    assert!(FlowMarks::open(pins.path()).is_ok(), "the marks are pinned");
}

/// Marks pinned with another layout (an older version's) are replaced at
/// load, with the flow table they counted: mapped at today's size they
/// would be read out of bounds, and their slots are not today's.
#[test]
fn flow_marks_pinned_with_another_layout_are_replaced_with_their_table() {
    let pins = PinDir::new("oldmarks");
    let flows = pin_flow_table(&pins, size_of::<inspector_common::FlowEntry>());
    let marks = pin_flow_marks(&pins, 16384);
    let ids = |p: &Path| pinned_info(p).id();
    let (old_flows, old_marks) = (ids(&flows), ids(&marks));
    let _ebpf = loader::load(pins.path()).expect("loading over the old marks");
    assert_ne!(ids(&flows), old_flows, "the flow table was kept");
    assert_ne!(ids(&marks), old_marks, "the old marks were kept");
    assert_eq!(
        pinned_info(&marks).value_size() as usize,
        size_of::<inspector_common::FlowMarks>()
    );
    assert!(FlowMarks::open(pins.path()).is_ok());
}

/// Servers' counts pinned by an older version, a hash by address, are
/// replaced at load by the array the programs index by each server's
/// `ServerLimits::counts` (reused, the hash would fail the verifier), and
/// the policy's servers count there.
#[test]
fn servers_counts_pinned_as_a_hash_are_replaced_by_an_array() {
    let pins = PinDir::new("oldconns");
    let value = size_of::<inspector_common::ConnCounts>().to_string();
    let spec = [
        "type", "hash", "key", "16", "value", &value, "entries", "16",
    ];
    let path = pin_map(&pins, inspector_common::maps::SERVER_CONNS, &spec);
    let old_id = pinned_info(&path).id();
    let _ebpf = loader::load(pins.path()).expect("loading over the old counts");
    let info = pinned_info(&path);
    assert_ne!(info.id(), old_id, "the old counts were kept");
    assert!(matches!(info.map_type(), Ok(aya::maps::MapType::Array)));
    assert_eq!(info.max_entries(), inspector_common::MAX_SERVERS);
}

/// Marks pinned without their flow table count flows that are gone: they
/// are replaced at load.
#[test]
fn flow_marks_pinned_without_their_table_are_replaced() {
    let pins = PinDir::new("lonemarks");
    let marks = pin_flow_marks(&pins, size_of::<inspector_common::FlowMarks>());
    let old = pinned_info(&marks).id();
    let _ebpf = loader::load(pins.path()).expect("loading over the lone marks");
    assert_ne!(pinned_info(&marks).id(), old, "the lone marks were kept");
}

/// Runs `each(cpu, round)` on both CPUs, a thread pinned to each, for
/// `rounds` rounds that both threads start together from a spin barrier;
/// returns what each CPU's runs gave, round by round.
fn on_two_cpus_at_once<T: Send>(
    rounds: usize,
    each: impl Fn(usize, usize) -> T + Sync,
) -> [Vec<T>; 2] {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let ready = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let runs = [0, 1].map(|cpu| {
            let (each, ready) = (&each, &ready);
            scope.spawn(move || {
                inspector_lab::figures::pin(0, cpu).unwrap();
                (0..rounds)
                    .map(|round| {
                        // Both arrive, then both go.
                        ready.fetch_add(1, Ordering::AcqRel);
                        while ready.load(Ordering::Acquire) < 2 * (round + 1) {
                            std::hint::spin_loop();
                        }
                        each(cpu, round)
                    })
                    .collect()
            })
        });
        runs.map(|r| r.join().unwrap())
    })
}

/// Two CPUs that each see a SYN for the last free slot of a server at the
/// same moment: at most one of them takes it. Each round uses a server of
/// its own (`max-embryonic = 1`, nothing taken yet), so no round depends on
/// a reset; the two threads, one per CPU, start each round from a spin
/// barrier and run their SYN through the program under BPF_PROG_TEST_RUN.
#[test]
fn syns_on_two_cpus_at_once_take_no_more_than_max_embryonic() {
    let clients = [CLIENT, Ipv4Addr::new(198, 18, 0, 3)];
    syns_on_two_cpus_at_once(
        "race",
        Ipv4Addr::new(198, 18, 4, 0),
        "max-embryonic = 1",
        |server| clients.map(|src| v4_tcp(src, server, 25)),
    );
}

/// The same race for a client's own limits: one client's SYNs from two
/// ports, one per CPU, to a server that lets each client hold one flow.
#[test]
fn one_clients_syns_on_two_cpus_at_once_take_no_more_than_per_client_limits() {
    for (test, base, limit) in [
        (
            "pcrace",
            Ipv4Addr::new(198, 18, 10, 0),
            "per-client-max = 1",
        ),
        (
            "pcerace",
            Ipv4Addr::new(198, 18, 12, 0),
            "per-client-embryonic-max = 1",
        ),
    ] {
        syns_on_two_cpus_at_once(test, base, limit, |server| {
            [1000, 2000].map(|port| {
                let tcp = tcp_segment(CLIENT.into(), server.into(), (port, 25), 1, 0x02, &[], &[]);
                eth4(&[&ipv4(CLIENT, server, TCP, tcp.len()), &tcp])
            })
        });
    }
}

/// 1000 rounds, each against a server of its own from `base` with `limit`
/// (drop): of the two SYNs `syns(server)` gives, run at once on the two
/// CPUs, exactly one passes, and no server holds two half-open flows.
fn syns_on_two_cpus_at_once(
    test: &str,
    base: Ipv4Addr,
    limit: &str,
    syns: impl Fn(Ipv4Addr) -> [Vec<u8>; 2],
) {
    const ROUNDS: usize = 1000;
    let mut c = Classifier::new(test);
    let servers = servers_from(
        &c,
        base,
        ROUNDS,
        &format!("{limit}\non-embryonic-limit = \"drop\""),
    );
    let frames: Vec<[Vec<u8>; 2]> = servers.into_iter().map(syns).collect();
    let xdp = &*loader::xdp_program(&mut c.ebpf).unwrap();
    let verdicts = on_two_cpus_at_once(ROUNDS, |cpu, round| {
        xdp.test_run(TestRunOptions {
            data_in: Some(&frames[round][cpu]),
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN of XDP")
        .return_value
    });
    let passed = |round: usize| {
        (0..2)
            .filter(|&cpu| verdicts[cpu][round] == XDP_PASS)
            .count()
    };
    let stats = limits::LimitStats::read(c.pins.path(), 0).unwrap();
    let over: Vec<_> = stats.servers.iter().filter(|s| s.embryonic > 1).collect();
    assert!(
        over.is_empty(),
        "{limit}: {} servers took 2 half-open flows: {:?}",
        over.len(),
        &over[..over.len().min(3)]
    );
    // The SYN whose add came second gives the slot back, the first keeps
    // it: a collision neither loses the slot nor passes the limit.
    let both = (0..ROUNDS).filter(|&r| passed(r) == 2).count();
    let neither = (0..ROUNDS).filter(|&r| passed(r) == 0).count();
    assert!(
        both == 0 && neither == 0,
        "{limit}: of {ROUNDS} rounds, {both} passed both SYNs and {neither} neither: {:?}",
        stats.drops
    );
}

/// One SYN duplicated on its way and seen on both CPUs at once: the
/// server counts one half-open flow, not two (on the code that tracked a
/// flow whether or not it was there, many servers counted two). Each
/// round a server of its own, with room for both copies (`max-embryonic
/// = 10`), so what is tested is the counting, not a limit.
#[test]
fn a_syn_seen_twice_at_once_counts_one_half_open_flow() {
    const ROUNDS: u32 = 1000;
    let mut c = Classifier::new("syncopies");
    let servers = servers_from(
        &c,
        Ipv4Addr::new(198, 18, 14, 0),
        ROUNDS as usize,
        "max-embryonic = 10\non-embryonic-limit = \"drop\"",
    );
    let frames: Vec<Vec<u8>> = servers.iter().map(|&s| v4_tcp(CLIENT, s, 25)).collect();
    let xdp = &*loader::xdp_program(&mut c.ebpf).unwrap();
    let verdicts = on_two_cpus_at_once(ROUNDS as usize, |_, round| run_xdp(xdp, &frames[round]).0);
    assert!(
        verdicts.iter().flatten().all(|&v| v == XDP_PASS),
        "a copy was dropped with room for both"
    );
    let stats = limits::LimitStats::read(c.pins.path(), 0).unwrap();
    let twice: Vec<_> = stats.servers.iter().filter(|s| s.embryonic != 1).collect();
    assert!(
        twice.is_empty(),
        "{} of {ROUNDS} servers count other than 1 half-open flow: {:?}",
        twice.len(),
        &twice[..twice.len().min(3)]
    );
}

/// The flow marks stand for the flow table: a SYN whose tuple is tracked
/// is looked up whatever the limit says, one whose tuple is not is judged
/// new. With `max-embryonic = 1` held by a client's half-open flow, that
/// client's SYN sent again passes (a retransmission the server answers),
/// another client's is dropped, and only the tracked flow is marked, the
/// dropped SYN's tuple not. Marks that missed the tracked flow would drop
/// its retransmission; marks left by dropped SYNs would fill the array.
/// And a SYN whose mark is gone is judged without the table at all.
#[test]
fn a_tracked_flows_syn_sent_again_passes_a_full_limit_and_only_tracked_flows_are_marked() {
    let mut c = Classifier::new("marks");
    c.protect_with(
        &[SERVER.into()],
        "max-embryonic = 1\non-embryonic-limit = \"drop\"",
    );
    let marks = FlowMarks::open(c.pins.path()).unwrap();
    assert_eq!(marks.total(), 0, "marks before any flow");
    let first = v4_tcp(CLIENT, SERVER, 25);
    assert_eq!(c.xdp(&first), XDP_PASS, "the first SYN takes the slot");
    assert_eq!(marks.total(), 1, "its flow is marked");
    for round in 0..3 {
        assert_eq!(c.xdp(&first), XDP_PASS, "the SYN sent again ({round})");
        assert_eq!(
            c.xdp(&v4_tcp(OTHER, SERVER, 25)),
            XDP_DROP,
            "another client's SYN ({round})"
        );
    }
    assert_eq!(marks.total(), 1, "dropped SYNs leave no mark");
    let stats = limits::LimitStats::read(c.pins.path(), 0).unwrap();
    assert_eq!(stats.servers[0].embryonic, 1);
    // With its mark taken away behind the kernel's back, the same SYN is
    // judged new without a look at the table: dropped, the limit full.
    let flows: aya::maps::HashMap<_, inspector_common::FlowKey, inspector_common::FlowEntry> =
        bpffs::open_map(c.pins.path(), inspector_common::maps::FLOWS)
            .unwrap()
            .try_into()
            .unwrap();
    let key = flows.keys().next().unwrap().unwrap();
    marks.removed(&key);
    assert_eq!(c.xdp(&first), XDP_DROP, "an unmarked SYN is not looked up");
}

/// The sweeper's settling never clears a live flow's mark: a slot that
/// counted a flow its scan did not see (X, inserted after the scan) is
/// recorded; then X's mark goes and another flow, Z, is inserted into
/// the same slot, so the slot again counts one flow the scan did not
/// see. Comparing counts alone (what the sweeper did before the marks
/// counted inserts) took that for a stale mark and cleared Z's; the
/// inserts' count, which moved, keeps it. Once nothing moves for a pass,
/// a mark its scan does not see is cleared.
#[test]
fn settling_the_marks_keeps_a_flow_inserted_since_the_last_pass() {
    let mut c = Classifier::new("settle");
    c.protect_with(
        &[SERVER.into()],
        "max-embryonic = 10\non-embryonic-limit = \"drop\"",
    );
    let mut marks = FlowMarks::open(c.pins.path()).unwrap();
    let key = |client: Ipv4Addr| inspector_common::FlowKey {
        client: inspector_common::v4_mapped(client.octets()),
        server: inspector_common::v4_mapped(SERVER.octets()),
        // `v4_tcp`'s ports.
        client_port: 40000,
        server_port: 25,
        protocol: 6,
        _pad: [0; 3],
    };
    let x = CLIENT;
    // Another client whose flow shares X's slot.
    let z = (1..=u16::MAX)
        .map(|i| Ipv4Addr::new(198, 18, 100 + (i >> 8) as u8 % 100, i as u8))
        .find(|&a| a != x && key(a).mark_slot() == key(x).mark_slot())
        .expect("a client in X's slot");
    assert_eq!(c.xdp(&v4_tcp(x, SERVER, 25)), XDP_PASS);
    assert_eq!(marks.settle(&[], true), 0, "a first pass clears nothing");
    marks.removed(&key(x));
    assert_eq!(c.xdp(&v4_tcp(z, SERVER, 25)), XDP_PASS);
    assert_eq!(marks.count(&key(z)), 1);
    // Z's insert came after this pass's (empty) scan.
    assert_eq!(
        marks.settle(&[], true),
        0,
        "a slot inserted into was lowered"
    );
    assert_eq!(marks.count(&key(z)), 1, "Z lost its mark");
    // A pass with nothing inserted: the mark its scan does not see goes.
    assert_eq!(marks.settle(&[], true), 1);
    assert_eq!(marks.count(&key(z)), 0);
}

/// Protects `count` servers, one per address from `base` on, each with
/// the policy lines `limits`; returns their addresses.
fn servers_from(c: &Classifier, base: Ipv4Addr, count: usize, limits: &str) -> Vec<Ipv4Addr> {
    let servers: Vec<Ipv4Addr> = (0..count as u32)
        .map(|i| Ipv4Addr::from(u32::from(base) + i))
        .collect();
    let addrs: Vec<IpAddr> = servers.iter().map(|&s| s.into()).collect();
    c.protect_with(&addrs, limits);
    servers
}

/// A frame through the XDP program: its verdict, and the frame as the
/// program left it.
fn run_xdp(xdp: &aya::programs::Xdp, frame: &[u8]) -> (u32, Vec<u8>) {
    let mut out = vec![0; 512];
    let r = xdp
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN of XDP");
    out.truncate(r.data_size_out as usize);
    (r.return_value, out)
}

/// Ethernet, IPv4 without options, then TCP: where a crafted frame's TCP
/// header starts.
const TCP_AT: usize = 14 + 20;

/// `rounds` servers from `base`, each with `limits` and intercept, whose
/// one embryonic slot (`max-embryonic = 1`) a half-open flow holds; each
/// of `clients` is then answered with a SYN cookie. Returns, round by
/// round, each client's ACK that echoes its cookie.
fn cookie_acks(
    c: &mut Classifier,
    base: Ipv4Addr,
    rounds: usize,
    limits: &str,
    clients: &[Ipv4Addr],
) -> Vec<Vec<Vec<u8>>> {
    const ISN: u32 = 0x1000_0000;
    const XDP_TX: u32 = 3;
    let servers = servers_from(
        c,
        base,
        rounds,
        &format!("{limits}\nmax-embryonic = 1\non-embryonic-limit = \"intercept\""),
    );
    let xdp = &*loader::xdp_program(&mut c.ebpf).unwrap();
    let segment =
        |src: Ipv4Addr, dst: Ipv4Addr, tcp: Vec<u8>| eth4(&[&ipv4(src, dst, TCP, tcp.len()), &tcp]);
    let syn = |src: Ipv4Addr, dst: Ipv4Addr, port: u16| {
        segment(
            src,
            dst,
            tcp_segment(src.into(), dst.into(), (port, 25), ISN, 0x02, &[], &[]),
        )
    };
    servers
        .into_iter()
        .map(|server| {
            let (verdict, _) = run_xdp(xdp, &syn(CLIENT, server, 1000));
            assert_eq!(verdict, XDP_PASS, "the first SYN takes the slot");
            clients
                .iter()
                .map(|&src| {
                    let (verdict, answer) = run_xdp(xdp, &syn(src, server, 2000));
                    assert_eq!(verdict, XDP_TX, "{src} is answered with a SYN cookie");
                    let cookie =
                        u32::from_be_bytes(answer[TCP_AT + 4..TCP_AT + 8].try_into().unwrap());
                    let ack = tcp_ack(
                        src.into(),
                        server.into(),
                        (2000, 25),
                        ISN + 1,
                        cookie.wrapping_add(1),
                        &[],
                    );
                    segment(src, server, ack)
                })
                .collect()
        })
        .collect()
}

/// Whether the program rewrote a client's ACK into its SYN to the server.
fn rewritten_into_syn(out: &[u8]) -> bool {
    out[TCP_AT + 13] == 0x02
}

/// Two CPUs that each verify a client's SYN cookie for the last
/// established slot of a server at the same moment: at most one of them
/// opens its server side. Each round's server (`max-conns = 1`, intercept)
/// has its one slot held by a half-open flow, so two more clients are
/// answered with cookies; their ACKs then run at once, one per CPU.
#[test]
fn verified_clients_on_two_cpus_at_once_take_no_more_than_max_conns() {
    const ROUNDS: usize = 500;
    let mut c = Classifier::new("verifyrace");
    let clients = [Ipv4Addr::new(198, 18, 0, 3), Ipv4Addr::new(198, 18, 0, 4)];
    let base = Ipv4Addr::new(198, 18, 6, 0);
    let acks = cookie_acks(&mut c, base, ROUNDS, "max-conns = 1", &clients);
    let xdp = &*loader::xdp_program(&mut c.ebpf).unwrap();
    // The program passes the packet either way.
    let opened = on_two_cpus_at_once(ROUNDS, |cpu, round| {
        let (verdict, out) = run_xdp(xdp, &acks[round][cpu]);
        assert_eq!(verdict, XDP_PASS);
        rewritten_into_syn(&out)
    });
    let both = (0..ROUNDS)
        .filter(|&r| opened[0][r] && opened[1][r])
        .count();
    let stats = limits::LimitStats::read(c.pins.path(), 0).unwrap();
    let over: Vec<_> = stats.servers.iter().filter(|s| s.established > 1).collect();
    assert!(
        both == 0 && over.is_empty(),
        "{both} rounds opened both clients; {} servers hold 2 established flows: {:?}",
        over.len(),
        &over[..over.len().min(3)]
    );
    // As for SYNs, the client whose add came second gives the slot back.
    let neither = (0..ROUNDS)
        .filter(|&r| !opened[0][r] && !opened[1][r])
        .count();
    assert_eq!(neither, 0, "{neither} of {ROUNDS} rounds opened no client");
}

/// One client's cookie ACK, duplicated on the way, reaching two CPUs at
/// once: one copy opens the server side and the other is dropped, so the
/// server sees one SYN and the flow is counted once. (With room to spare:
/// `max-conns = 2`, so neither copy is refused for want of a slot.)
#[test]
fn a_cookie_ack_seen_twice_at_once_opens_one_flow() {
    const ROUNDS: usize = 500;
    let mut c = Classifier::new("ackcopies");
    let client = Ipv4Addr::new(198, 18, 0, 3);
    let base = Ipv4Addr::new(198, 18, 8, 0);
    let acks = cookie_acks(&mut c, base, ROUNDS, "max-conns = 2", &[client]);
    let xdp = &*loader::xdp_program(&mut c.ebpf).unwrap();
    let runs = on_two_cpus_at_once(ROUNDS, |_, round| run_xdp(xdp, &acks[round][0]));
    for (round, (a, b)) in runs[0].iter().zip(&runs[1]).enumerate() {
        let opened = [a, b]
            .iter()
            .filter(|(_, out)| rewritten_into_syn(out))
            .count();
        assert_eq!(opened, 1, "round {round}: {opened} copies opened the flow");
        // The other copy is dropped: seen at once, it finds the flow
        // opening when it tracks it (`Opening::Copy`); seen after, when it
        // looks the flow up (the client's packets wait while it opens).
        let other = if rewritten_into_syn(&a.1) { b } else { a };
        assert_eq!(other.0, XDP_DROP, "round {round}: the other copy");
    }
    let stats = limits::LimitStats::read(c.pins.path(), 0).unwrap();
    let twice: Vec<_> = stats
        .servers
        .iter()
        .filter(|s| s.established != 1)
        .collect();
    assert!(
        twice.is_empty(),
        "{} servers count other than 1 established flow: {:?}",
        twice.len(),
        &twice[..twice.len().min(3)]
    );
    let verified = stats.intercepts[inspector_common::InterceptEvent::ClientVerified as usize];
    assert_eq!(verified, ROUNDS as u64, "clients-verified");
}
