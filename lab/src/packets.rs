//! Crafted frames for BPF_PROG_TEST_RUN (the classifier tests and the
//! kernel benchmark): Ethernet, VLAN, IPv4, IPv6, TCP, UDP.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;

/// Ethernet header; `tags` are VLAN EtherTypes (outermost first), each
/// followed by a tag with VLAN id 100.
pub fn ethernet(tags: &[u16], ether_type: u16) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    for tag in tags {
        f.extend(tag.to_be_bytes());
        f.extend(100u16.to_be_bytes());
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
