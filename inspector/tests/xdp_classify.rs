//! The XDP classifier under BPF_PROG_TEST_RUN: crafted frames of every shape,
//! each checked for its verdict and for the one class counter it moved.
//! Needs root (loads BPF programs); fails, never skips, without it.

mod support;

use std::net::{Ipv4Addr, Ipv6Addr};

use aya::{
    Ebpf,
    programs::{TestRun, TestRunOptions},
};
use inspector::{
    config::parse_network,
    kernel::{
        counters::ClassStats,
        exempt::{ExemptTable, Origin},
        loader,
    },
};
use inspector_common::Class;
use inspector_lab::packets::*;
use support::PinDir;

const XDP_PASS: u32 = 2;
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 25);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2);
const SERVER6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 0x25);

/// The loaded classifier with its own pinned maps.
struct Classifier {
    ebpf: Ebpf,
    pins: PinDir,
}

impl Classifier {
    fn new(test: &str) -> Self {
        let pins = PinDir::new(test);
        let ebpf = loader::load(pins.path()).expect("loading the classifier");
        Self { ebpf, pins }
    }

    fn exempt(&self, network: &str) {
        let net = parse_network(network).unwrap();
        ExemptTable::open(self.pins.path())
            .unwrap()
            .add(&net, Origin::Live)
            .unwrap();
    }

    /// Runs `frame` once; asserts XDP_PASS and that exactly one class
    /// counted exactly this packet and its bytes; returns that class.
    fn classify(&mut self, frame: &[u8]) -> Class {
        let before = ClassStats::read(self.pins.path()).unwrap();
        let xdp = loader::xdp_program(&mut self.ebpf).unwrap();
        let result = xdp
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        assert_eq!(result.return_value, XDP_PASS, "every packet is passed");
        let after = ClassStats::read(self.pins.path()).unwrap();
        let moved: Vec<Class> = Class::ALL
            .into_iter()
            .filter(|&c| after.get(c) != before.get(c))
            .collect();
        assert_eq!(
            moved.len(),
            1,
            "exactly one class counts a packet: {moved:?}"
        );
        let class = moved[0];
        assert_eq!(after.get(class).packets, before.get(class).packets + 1);
        assert_eq!(
            after.get(class).bytes,
            before.get(class).bytes + frame.len() as u64
        );
        class
    }
}

#[test]
fn ipv4_smtp_is_inspected_and_other_traffic_passes() {
    let mut c = Classifier::new("ipv4");
    assert_eq!(c.classify(&v4_tcp(CLIENT, SERVER, 25)), Class::Inspect);
    assert_eq!(c.classify(&v4_tcp(CLIENT, SERVER, 587)), Class::Pass);
    assert_eq!(c.classify(&v4_tcp(SERVER, CLIENT, 40000)), Class::Pass);
    let udp25 = frame(&[
        &ethernet(&[], ETH_P_IP),
        &ipv4(CLIENT, SERVER, UDP, 8),
        &udp(25),
    ]);
    assert_eq!(c.classify(&udp25), Class::Pass);
    let icmp = frame(&[
        &ethernet(&[], ETH_P_IP),
        &ipv4(CLIENT, SERVER, ICMP, 8),
        &[8, 0, 0, 0, 0, 0, 0, 0],
    ]);
    assert_eq!(c.classify(&icmp), Class::Pass);
    let arp = frame(&[&ethernet(&[], ETH_P_ARP), &[0u8; 28]]);
    assert_eq!(c.classify(&arp), Class::Pass);
}

#[test]
fn ipv4_options_and_tcp_options_are_skipped() {
    let mut c = Classifier::new("options");
    // IHL 6: one 4-byte option (NOPs); TCP data offset 6: one option word.
    let mut ip = ipv4(CLIENT, SERVER, TCP, 24);
    ip[0] = 0x46;
    ip.extend([1, 1, 1, 1]);
    let mut t = tcp(25);
    t[12] = 0x60;
    t.extend([1, 1, 1, 1]);
    assert_eq!(
        c.classify(&frame(&[&ethernet(&[], ETH_P_IP), &ip, &t])),
        Class::Inspect
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
    let dst = [TCP, 0, 1, 4, 0, 0, 0, 0];
    let f = frame(&[
        &ethernet(&[], ETH_P_IPV6),
        &ipv6(CLIENT6, SERVER6, 0, 36),
        &hbh,
        &dst,
        &tcp(25),
    ]);
    assert_eq!(c.classify(&f), Class::Inspect);
    // First fragment carries the TCP header; a later one has no ports.
    let first = [TCP, 0, 0, 1, 0, 0, 0, 7];
    let f = frame(&[
        &ethernet(&[], ETH_P_IPV6),
        &ipv6(CLIENT6, SERVER6, 44, 28),
        &first,
        &tcp(25),
    ]);
    assert_eq!(c.classify(&f), Class::Inspect);
    let later = [TCP, 0, 0x05, 0x00, 0, 0, 0, 7];
    let f = frame(&[
        &ethernet(&[], ETH_P_IPV6),
        &ipv6(CLIENT6, SERVER6, 44, 16),
        &later,
        &[0u8; 8],
    ]);
    assert_eq!(c.classify(&f), Class::Pass);
    let udp = frame(&[
        &ethernet(&[], ETH_P_IPV6),
        &ipv6(CLIENT6, SERVER6, UDP, 8),
        &udp(25),
    ]);
    assert_eq!(c.classify(&udp), Class::Pass);
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
    // Three tags: the third is not followed; its EtherType is not IP.
    let three = frame(&[
        &ethernet(&[ETH_P_8021Q, ETH_P_8021Q, ETH_P_8021Q], ETH_P_IP),
        &ip,
        &t,
    ]);
    assert_eq!(c.classify(&three), Class::Pass);
}

#[test]
fn frames_truncated_at_each_header_are_malformed() {
    let mut c = Classifier::new("truncated");
    let whole = v4_tcp(CLIENT, SERVER, 25);
    // Cut inside the IPv4 header, at its end, and inside the TCP header
    // (the kernel refuses test frames shorter than an Ethernet header).
    for len in [14, 20, 33, 34, 40, 53] {
        assert_eq!(
            c.classify(&whole[..len]),
            Class::Malformed,
            "IPv4 frame cut at {len}"
        );
    }
    let whole6 = v6_tcp(CLIENT6, SERVER6, 25);
    for len in [14, 30, 53, 54, 60, 73] {
        assert_eq!(
            c.classify(&whole6[..len]),
            Class::Malformed,
            "IPv6 frame cut at {len}"
        );
    }
    let vlan = frame(&[
        &ethernet(&[ETH_P_8021Q], ETH_P_IP),
        &ipv4(CLIENT, SERVER, TCP, 20),
        &tcp(25),
    ]);
    assert_eq!(
        c.classify(&vlan[..16]),
        Class::Malformed,
        "cut inside the VLAN tag"
    );
    let udp = frame(&[
        &ethernet(&[], ETH_P_IP),
        &ipv4(CLIENT, SERVER, UDP, 8),
        &udp(53),
    ]);
    assert_eq!(c.classify(&udp[..38]), Class::Malformed, "cut inside UDP");
    let hbh = [TCP, 0, 1, 4, 0, 0, 0, 0];
    let ext = frame(&[
        &ethernet(&[], ETH_P_IPV6),
        &ipv6(CLIENT6, SERVER6, 0, 28),
        &hbh,
        &tcp(25),
    ]);
    assert_eq!(
        c.classify(&ext[..55]),
        Class::Malformed,
        "cut inside an extension header"
    );
}

#[test]
fn impossible_header_values_are_malformed() {
    let mut c = Classifier::new("invalid");
    let whole = v4_tcp(CLIENT, SERVER, 25);
    let mut bad_version = whole.clone();
    bad_version[14] = 0x55;
    assert_eq!(c.classify(&bad_version), Class::Malformed);
    let mut short_ihl = whole.clone();
    short_ihl[14] = 0x44;
    assert_eq!(c.classify(&short_ihl), Class::Malformed);
    let mut ihl_past_end = whole.clone();
    ihl_past_end[14] = 0x4f; // 60-byte header in a 40-byte packet
    assert_eq!(c.classify(&ihl_past_end), Class::Malformed);
    let mut total_too_small = whole.clone();
    total_too_small[16..18].copy_from_slice(&10u16.to_be_bytes());
    assert_eq!(c.classify(&total_too_small), Class::Malformed);
    let mut doff_small = whole.clone();
    doff_small[14 + 20 + 12] = 0x40;
    assert_eq!(c.classify(&doff_small), Class::Malformed);
    let mut doff_past_end = whole.clone();
    doff_past_end[14 + 20 + 12] = 0xf0; // 60-byte TCP header in 20 bytes
    assert_eq!(c.classify(&doff_past_end), Class::Malformed);
    let mut bad_v6 = v6_tcp(CLIENT6, SERVER6, 25);
    bad_v6[14] = 0x40;
    assert_eq!(c.classify(&bad_v6), Class::Malformed);
    // More extension headers than the classifier walks.
    let hop = [0u8, 0, 1, 4, 0, 0, 0, 0];
    let mut f = frame(&[
        &ethernet(&[], ETH_P_IPV6),
        &ipv6(CLIENT6, SERVER6, 0, 7 * 8 + 20),
    ]);
    for _ in 0..7 {
        f.extend(hop);
    }
    f.extend(tcp(25));
    assert_eq!(c.classify(&f), Class::Malformed);
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
    let udp = frame(&[
        &ethernet(&[], ETH_P_IP),
        &ipv4(CLIENT, gateway, UDP, 8),
        &udp(53),
    ]);
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
