//! Header parsing: Ethernet (with up to two VLAN tags), IPv4, IPv6 (with its
//! extension headers), TCP and UDP. Any header that is cut short or carries
//! an impossible value makes the packet malformed.

use crate::packet::Packet;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const VLAN_HLEN: usize = 4;
const MAX_VLAN_TAGS: usize = 2;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;
/// Extension headers walked before giving up on finding the transport.
const MAX_IPV6_EXT_HEADERS: usize = 6;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Addr {
    V4([u8; 4]),
    V6([u8; 16]),
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp(Tcp),
    Udp,
    /// Another protocol, or a non-first fragment (no transport header).
    Other,
}

/// What the limits need from a TCP header: ports in host order and flags.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Tcp {
    pub src_port: u16,
    pub dst_port: u16,
    /// The flags byte (FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10).
    pub flags: u8,
    /// Offsets of the IP and TCP headers, for TCP intercept's rewrites.
    pub l3: usize,
    pub l4: usize,
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

pub enum Headers {
    /// ARP, LLDP and friends: not ours to judge.
    NotIp,
    Ip {
        src: Addr,
        dst: Addr,
        transport: Transport,
    },
}

impl Headers {
    #[inline(always)]
    pub fn is_tcp(&self) -> bool {
        matches!(
            self,
            Headers::Ip {
                transport: Transport::Tcp(_),
                ..
            }
        )
    }
}

/// A header we could not read.
pub struct Malformed;

#[inline(always)]
pub fn headers(packet: &Packet) -> Result<Headers, Malformed> {
    let (ether_type, l3) = ethernet(packet)?;
    match ether_type {
        ETH_P_IP => ipv4(packet, l3),
        ETH_P_IPV6 => ipv6(packet, l3),
        _ => Ok(Headers::NotIp),
    }
}

/// The addresses and TCP header of a TCP packet; `None` for anything else
/// (other protocols, non-IP, malformed).
#[inline(always)]
pub fn tcp(packet: &Packet) -> Option<(Addr, Addr, Tcp)> {
    match headers(packet) {
        Ok(Headers::Ip {
            src,
            dst,
            transport: Transport::Tcp(tcp),
        }) => Some((src, dst, tcp)),
        _ => None,
    }
}

/// Returns the EtherType after any VLAN tags, and the offset of the L3 header.
#[inline(always)]
fn ethernet(packet: &Packet) -> Result<(u16, usize), Malformed> {
    let mut ether_type = packet.u16_at(12).ok_or(Malformed)?;
    let mut offset = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        // The tag's TCI is 2 bytes, then the inner EtherType.
        ether_type = packet.u16_at(offset + 2).ok_or(Malformed)?;
        offset += VLAN_HLEN;
    }
    Ok((ether_type, offset))
}

#[inline(always)]
fn ipv4(packet: &Packet, l3: usize) -> Result<Headers, Malformed> {
    let first: [u8; 20] = packet.read(l3).ok_or(Malformed)?;
    let version = first[0] >> 4;
    let header_len = ((first[0] & 0x0f) as usize) * 4;
    let total_len = u16::from_be_bytes([first[2], first[3]]) as usize;
    if version != 4 || header_len < 20 || total_len < header_len {
        return Err(Malformed);
    }
    let fragment_offset = u16::from_be_bytes([first[6], first[7]]) & 0x1fff;
    let src = Addr::V4([first[12], first[13], first[14], first[15]]);
    let dst = Addr::V4([first[16], first[17], first[18], first[19]]);
    let transport = if fragment_offset != 0 {
        Transport::Other
    } else {
        transport(packet, first[9], l3, l3 + header_len)?
    };
    Ok(Headers::Ip {
        src,
        dst,
        transport,
    })
}

#[inline(always)]
fn ipv6(packet: &Packet, l3: usize) -> Result<Headers, Malformed> {
    let fixed: [u8; 40] = packet.read(l3).ok_or(Malformed)?;
    if fixed[0] >> 4 != 6 {
        return Err(Malformed);
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&fixed[8..24]);
    dst.copy_from_slice(&fixed[24..40]);

    let mut next = fixed[6];
    let mut offset = l3 + 40;
    let mut transport_found = false;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        let ext: [u8; 2] = match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH | IPPROTO_FRAGMENT => {
                packet.read(offset).ok_or(Malformed)?
            }
            _ => {
                transport_found = true;
                break;
            }
        };
        let ext_len = match next {
            IPPROTO_FRAGMENT => {
                let frag: [u8; 4] = packet.read(offset).ok_or(Malformed)?;
                if u16::from_be_bytes([frag[2], frag[3]]) & 0xfff8 != 0 {
                    // A non-first fragment: the transport header is elsewhere.
                    let transport = Transport::Other;
                    return Ok(ip6(src, dst, transport));
                }
                8
            }
            IPPROTO_AH => (ext[1] as usize + 2) * 4,
            _ => (ext[1] as usize + 1) * 8,
        };
        next = ext[0];
        offset += ext_len;
    }
    if !transport_found {
        return Err(Malformed);
    }
    Ok(ip6(src, dst, transport(packet, next, l3, offset)?))
}

#[inline(always)]
fn ip6(src: [u8; 16], dst: [u8; 16], transport: Transport) -> Headers {
    Headers::Ip {
        src: Addr::V6(src),
        dst: Addr::V6(dst),
        transport,
    }
}

#[inline(always)]
fn transport(packet: &Packet, protocol: u8, l3: usize, l4: usize) -> Result<Transport, Malformed> {
    match protocol {
        IPPROTO_TCP => {
            let tcp: [u8; 20] = packet.read(l4).ok_or(Malformed)?;
            let header_len = ((tcp[12] >> 4) as usize) * 4;
            if header_len < 20 {
                return Err(Malformed);
            }
            // Options must be there too (the header length says they are).
            packet.u8_at(l4 + header_len - 1).ok_or(Malformed)?;
            Ok(Transport::Tcp(Tcp {
                src_port: u16::from_be_bytes([tcp[0], tcp[1]]),
                dst_port: u16::from_be_bytes([tcp[2], tcp[3]]),
                flags: tcp[13],
                l3,
                l4,
            }))
        }
        IPPROTO_UDP => {
            packet.read::<[u8; 8]>(l4).ok_or(Malformed)?;
            Ok(Transport::Udp)
        }
        _ => Ok(Transport::Other),
    }
}
