//! Crafted frames for BPF_PROG_TEST_RUN (the classifier tests and the
//! kernel benchmark) and packets for raw sockets (the fragment tests):
//! Ethernet, VLAN, IPv4, IPv6 with extension headers, fragments, TCP, UDP.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use inspector_common::csum;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const IPV6_FRAGMENT: u8 = 44;
pub const IPV6_DSTOPTS: u8 = 60;

/// Ethernet header; `tags` are VLAN EtherTypes (outermost first), each
/// followed by a tag with VLAN id 100.
pub fn ethernet(tags: &[u16], ether_type: u16) -> Vec<u8> {
    ethernet_vid(tags, 100, ether_type)
}

/// [`ethernet`] with VLAN id `vid` in every tag. Id 0 is a priority tag:
/// Linux strips any number of them and delivers what is inside, VLAN
/// support or not.
pub fn ethernet_vid(tags: &[u16], vid: u16, ether_type: u16) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    for tag in tags {
        f.extend(tag.to_be_bytes());
        f.extend(vid.to_be_bytes());
    }
    f.extend(ether_type.to_be_bytes());
    f
}

pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, payload_len: usize) -> Vec<u8> {
    let total = (20 + payload_len) as u16;
    let mut h = vec![0x45, 0];
    h.extend(total.to_be_bytes());
    h.extend([0, 1, 0x40, 0, 64, protocol, 0, 0]);
    h.extend(src.octets());
    h.extend(dst.octets());
    h
}

pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload_len: usize) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend((payload_len as u16).to_be_bytes());
    h.extend([next, 64]);
    h.extend(src.octets());
    h.extend(dst.octets());
    h
}

/// A TCP SYN header without options.
pub fn tcp(dst_port: u16) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend(40000u16.to_be_bytes());
    h.extend(dst_port.to_be_bytes());
    h.extend([0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    h
}

pub fn udp(dst_port: u16) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend(40000u16.to_be_bytes());
    h.extend(dst_port.to_be_bytes());
    h.extend(8u16.to_be_bytes());
    h.extend([0, 0]);
    h
}

/// Concatenates header pieces.
pub fn frame(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

pub fn v4_tcp(src: Ipv4Addr, dst: Ipv4Addr, dst_port: u16) -> Vec<u8> {
    frame(&[
        &ethernet(&[], ETH_P_IP),
        &ipv4(src, dst, TCP, 20),
        &tcp(dst_port),
    ])
}

pub fn v6_tcp(src: Ipv6Addr, dst: Ipv6Addr, dst_port: u16) -> Vec<u8> {
    frame(&[
        &ethernet(&[], ETH_P_IPV6),
        &ipv6(src, dst, TCP, 20),
        &tcp(dst_port),
    ])
}

/// An IPv4 header carrying one fragment: `offset` in bytes (a multiple of
/// 8), `more` the MF flag, `data_len` the bytes that follow; DF clear.
/// The header checksum is filled in.
pub fn ipv4_fragment(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    id: u16,
    offset: usize,
    more: bool,
    data_len: usize,
) -> Vec<u8> {
    assert_eq!(offset % 8, 0, "fragment offsets are in 8-byte units");
    let mut h = ipv4(src, dst, protocol, data_len);
    h[4..6].copy_from_slice(&id.to_be_bytes());
    let flags = (offset / 8) as u16 | if more { 0x2000 } else { 0 };
    h[6..8].copy_from_slice(&flags.to_be_bytes());
    let check = csum::ipv4_header(h[..20].try_into().unwrap());
    h[10..12].copy_from_slice(&check.to_be_bytes());
    h
}

/// A whole IPv4 packet, header checksum filled in (for frames the kernel
/// receives as sent, from a packet socket).
pub fn ipv4_packet(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, payload: &[u8]) -> Vec<u8> {
    let mut packet = ipv4_fragment(src, dst, protocol, 1, 0, false, payload.len());
    packet.extend(payload);
    packet
}

/// An IPv6 Fragment header (8 bytes): `next` is the protocol of the
/// fragmentable part, `offset` in bytes (a multiple of 8).
pub fn ipv6_fragment_header(next: u8, offset: usize, more: bool, id: u32) -> Vec<u8> {
    assert_eq!(offset % 8, 0, "fragment offsets are in 8-byte units");
    let mut h = vec![next, 0];
    h.extend((offset as u16 | u16::from(more)).to_be_bytes());
    h.extend(id.to_be_bytes());
    h
}

/// A Destination Options header of 8 bytes (a PadN option) followed by `next`.
pub fn ipv6_dstopts(next: u8) -> Vec<u8> {
    vec![next, 0, 1, 4, 0, 0, 0, 0]
}

/// One piece of a datagram's payload: where it starts (bytes), whether
/// more follow, and its bytes (they may differ from the datagram's, to
/// overlap).
#[derive(Clone, Debug)]
pub struct Piece {
    pub offset: usize,
    pub more: bool,
    pub data: Vec<u8>,
}

/// `payload` cut at `cuts` (byte offsets, multiples of 8) into pieces in
/// order, the last without "more".
pub fn split(payload: &[u8], cuts: &[usize]) -> Vec<Piece> {
    let mut bounds = vec![0];
    bounds.extend_from_slice(cuts);
    bounds.push(payload.len());
    bounds
        .windows(2)
        .map(|w| Piece {
            offset: w[0],
            more: w[1] != payload.len(),
            data: payload[w[0]..w[1]].to_vec(),
        })
        .collect()
}

/// IP packets (no Ethernet header), one per piece: IPv4 fragments, or IPv6
/// packets with `ext` (extension headers before the Fragment header, each
/// naming the next; the last must name 44) and a Fragment header.
pub fn fragments(
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
    id: u32,
    pieces: &[Piece],
) -> Vec<Vec<u8>> {
    pieces
        .iter()
        .map(|p| match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut packet =
                    ipv4_fragment(s, d, protocol, id as u16, p.offset, p.more, p.data.len());
                packet.extend(&p.data);
                packet
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let frag = ipv6_fragment_header(protocol, p.offset, p.more, id);
                frame(&[
                    &ipv6(s, d, IPV6_FRAGMENT, frag.len() + p.data.len()),
                    &frag,
                    &p.data,
                ])
            }
            _ => panic!("mixed address families"),
        })
        .collect()
}

/// A TCP segment from `src` to `dst` with a valid checksum: `options`
/// (padded to a multiple of 4 by the caller) and `payload`.
pub fn tcp_segment(
    src: IpAddr,
    dst: IpAddr,
    ports: (u16, u16),
    seq: u32,
    flags: u8,
    options: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0, "TCP options fill whole words");
    let header_len = 20 + options.len();
    let mut t = Vec::with_capacity(header_len + payload.len());
    t.extend(ports.0.to_be_bytes());
    t.extend(ports.1.to_be_bytes());
    t.extend(seq.to_be_bytes());
    t.extend([0, 0, 0, 0]);
    t.push(((header_len / 4) as u8) << 4);
    t.push(flags);
    t.extend(64240u16.to_be_bytes());
    t.extend([0, 0, 0, 0]);
    t.extend(options);
    t.extend(payload);
    set_tcp_checksum(src, dst, &mut t);
    t
}

/// A pure ACK from `src` to `dst`: `seq`, acknowledging `ack`, with
/// `options` (as in [`tcp_segment`]) and a valid checksum.
pub fn tcp_ack(
    src: IpAddr,
    dst: IpAddr,
    ports: (u16, u16),
    seq: u32,
    ack: u32,
    options: &[u8],
) -> Vec<u8> {
    let mut t = tcp_segment(src, dst, ports, seq, 0x10, options, &[]);
    t[8..12].copy_from_slice(&ack.to_be_bytes());
    set_tcp_checksum(src, dst, &mut t);
    t
}

/// Fills in the checksum of the TCP segment `t` from `src` to `dst`.
fn set_tcp_checksum(src: IpAddr, dst: IpAddr, t: &mut [u8]) {
    let addresses = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => [s.octets().as_slice(), &d.octets()].concat(),
        (IpAddr::V6(s), IpAddr::V6(d)) => [s.octets().as_slice(), &d.octets()].concat(),
        _ => panic!("mixed address families"),
    };
    t[16..18].fill(0);
    let check = csum::tcp(&addresses, t);
    t[16..18].copy_from_slice(&check.to_be_bytes());
}

/// The options of a Linux SYN: MSS, SACK permitted, timestamps, window
/// scale (20 bytes, so the header is 40).
pub fn syn_options(mss: u16) -> Vec<u8> {
    let mut o = vec![2, 4];
    o.extend(mss.to_be_bytes());
    o.extend([4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7]);
    o
}

/// A SYN from `src` to `dst` with [`syn_options`] and `payload` (a SYN may
/// carry data; servers without TCP Fast Open ignore it).
pub fn syn(src: IpAddr, dst: IpAddr, ports: (u16, u16), payload: &[u8]) -> Vec<u8> {
    let mss = if src.is_ipv4() { 1460 } else { 1440 };
    tcp_segment(
        src,
        dst,
        ports,
        0x1000_0000,
        0x02,
        &syn_options(mss),
        payload,
    )
}
