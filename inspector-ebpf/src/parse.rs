//! Header parsing: Ethernet (with up to two VLAN tags), IPv4, IPv6 (with its
//! extension headers and fragments), TCP and UDP. Every read after the IP
//! header is bounded twice: by the frame (what the verifier checks) and by
//! the IP datagram's own length, so Ethernet padding is never read as a
//! header. A packet whose transport header cannot be found has a
//! [`Transport::Unparsable`] (with the reason, and whether it could be
//! TCP), or, when not even its addresses could be read, no headers at all.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use inspector_common::{Addr16, ParseDrop};

use crate::packet::Packet;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const ETH_P_MPLS_UC: u16 = 0x8847;
const ETH_P_MPLS_MC: u16 = 0x8848;
const ETH_P_PPP_SES: u16 = 0x8864;
const VLAN_HLEN: usize = 4;
const MAX_VLAN_TAGS: usize = 2;

const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;
/// Extension headers walked before giving up on finding the transport:
/// RFC 8200's order allows at most six before the upper layer.
const MAX_IPV6_EXT_HEADERS: usize = 6;

/// "No bound": an IP length of 0 (IPv6 jumbograms, or GRO packets over
/// 64 KiB on their way to TC), where only the frame bounds the reads.
const UNBOUNDED: usize = 0x1_0000_0000;

/// An address as words in memory order (`from_ne_bytes` of the packet's
/// bytes), so it moves as 4-byte words, not byte by byte (BPF has no
/// unaligned access: byte arrays are copied a byte at a time).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Addr {
    V4(u32),
    V6([u32; 4]),
}

impl Addr {
    /// Both versions in one 16-byte form: IPv4 mapped into IPv6.
    #[inline(always)]
    pub fn write16(&self, to: &mut Addr16) {
        match self {
            Addr::V4(a) => {
                to[..12].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
                to[12..].copy_from_slice(&a.to_ne_bytes());
            }
            Addr::V6(a) => {
                for (i, word) in a.iter().enumerate() {
                    to[4 * i..4 * i + 4].copy_from_slice(&word.to_ne_bytes());
                }
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp(Tcp),
    Udp(u16, u16),
    /// Another protocol, or a later fragment (no transport header).
    Other,
    /// The transport header could not be found: why, and whether the
    /// packet could be TCP (its protocol says so, or is unknown).
    Unparsable(ParseDrop, bool),
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

/// A packet that is one fragment of an IP datagram (an IPv6 atomic
/// fragment, offset 0 and no more to come, is a whole packet: RFC 6946).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    /// Not the first fragment: no transport header.
    pub later: bool,
    /// No more fragments follow (IPv4 MF, IPv6 M clear).
    pub last: bool,
    /// The protocol this packet says the datagram carries.
    pub protocol: u8,
    pub version: u8,
    /// The identification (16 bits over IPv4, 32 over IPv6).
    pub id: u32,
    /// Where this fragment's data starts in the datagram, in bytes.
    pub offset: u32,
    /// Bytes of fragment data in this packet.
    pub len: u32,
}

pub enum Headers {
    /// ARP, LLDP and friends: not ours to judge.
    NotIp,
    Ip {
        src: Addr,
        dst: Addr,
        transport: Transport,
        fragment: Option<Fragment>,
    },
}

/// Why a read after the IP header failed.
#[derive(Clone, Copy)]
enum Short {
    /// Past the IP datagram's end (its length field).
    Datagram,
    /// Past the frame (or, in TC, past the part of it that is linear).
    Frame,
    /// An impossible header length.
    Invalid,
}

/// The headers, or, when not even the IP addresses could be read, why
/// (such a packet could be anything).
#[inline(always)]
pub fn headers(packet: &Packet) -> Result<Headers, ParseDrop> {
    let (ether_type, l3) = ethernet(packet)?;
    match ether_type {
        ETH_P_IP => ipv4(packet, l3),
        ETH_P_IPV6 => ipv6(packet, l3),
        ETH_P_8021Q | ETH_P_8021AD | ETH_P_MPLS_UC | ETH_P_MPLS_MC | ETH_P_PPP_SES => {
            Err(ParseDrop::UnparsableEncapsulation)
        }
        _ => Ok(Headers::NotIp),
    }
}

/// The addresses and TCP header of the whole TCP segment being handled.
#[repr(C)]
pub struct TcpHeaders {
    pub src: Addr,
    pub dst: Addr,
    pub tcp: Tcp,
}

/// Where the classifier leaves a whole TCP segment's headers for the
/// limits, TCP intercept and the steering, which run after it in the same
/// program run: per-CPU memory, so that they need not parse the packet
/// again and their stack frames stay small.
#[map]
static TCP_HEADERS: PerCpuArray<TcpHeaders> = PerCpuArray::with_max_entries(1, 0);

/// Header offsets are below this (the longest chain the parser walks ends
/// near 12 KiB); an offset read back from map memory is masked with it, so
/// the verifier knows its bounds again.
const MAX_HEADER_OFF: usize = 0x3fff;

/// Keeps a whole TCP segment's headers for [`tcp`] (`classify` does,
/// when its decision says `tcp`).
#[inline(always)]
pub fn keep_tcp(src: &Addr, dst: &Addr, tcp: &Tcp) {
    if let Some(out) = TCP_HEADERS.get_ptr_mut(0) {
        // SAFETY: this CPU's slot, used by this program run only (XDP and
        // TC runs do not nest on one CPU).
        let out = unsafe { &mut *out };
        set(&mut out.src, src);
        set(&mut out.dst, dst);
        out.tcp = *tcp;
    }
}

/// The addresses and TCP header of the packet being handled, which the
/// classifier found to be a whole TCP segment (only call it then: in
/// another packet's run they would be that packet's). The addresses are
/// valid for this program run.
#[inline(always)]
pub fn tcp() -> Option<(&'static Addr, &'static Addr, Tcp)> {
    let h = TCP_HEADERS.get(0)?;
    let mut tcp = h.tcp;
    tcp.l3 &= MAX_HEADER_OFF;
    tcp.l4 &= MAX_HEADER_OFF;
    Some((&h.src, &h.dst, tcp))
}

/// Writes only the bytes of the address's own variant.
#[inline(always)]
fn set(to: &mut Addr, addr: &Addr) {
    match addr {
        Addr::V4(a) => *to = Addr::V4(*a),
        Addr::V6(a) => *to = Addr::V6(*a),
    }
}

/// Returns the EtherType after any VLAN tags, and the offset of the L3 header.
#[inline(always)]
fn ethernet(packet: &Packet) -> Result<(u16, usize), ParseDrop> {
    const TRUNCATED: ParseDrop = ParseDrop::UnparsableTruncated;
    let mut ether_type = packet.u16_at(12).ok_or(TRUNCATED)?;
    let mut offset = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        // The tag's TCI is 2 bytes, then the inner EtherType.
        ether_type = packet.u16_at(offset + 2).ok_or(TRUNCATED)?;
        offset += VLAN_HLEN;
    }
    Ok((ether_type, offset))
}

#[inline(always)]
fn ipv4(packet: &Packet, l3: usize) -> Result<Headers, ParseDrop> {
    let first: [u8; 20] = packet.read(l3).ok_or(ParseDrop::UnparsableTruncated)?;
    let version = first[0] >> 4;
    let header_len = ((first[0] & 0x0f) as usize) * 4;
    let total_len = u16::from_be_bytes([first[2], first[3]]) as usize;
    if version != 4 || header_len < 20 || (total_len < header_len && total_len != 0) {
        return Err(ParseDrop::UnparsableInvalid);
    }
    let ip_end = if total_len == 0 {
        UNBOUNDED
    } else {
        l3 + total_len
    };
    let src = Addr::V4(u32::from_ne_bytes([
        first[12], first[13], first[14], first[15],
    ]));
    let dst = Addr::V4(u32::from_ne_bytes([
        first[16], first[17], first[18], first[19],
    ]));
    let protocol = first[9];
    let frag = u16::from_be_bytes([first[6], first[7]]);
    let more = frag & 0x2000 != 0;
    let offset = ((frag & 0x1fff) as u32) * 8;
    let fragment = (more || offset != 0).then_some(Fragment {
        later: offset != 0,
        last: !more,
        protocol,
        version: 4,
        id: u16::from_be_bytes([first[4], first[5]]) as u32,
        offset,
        len: (total_len as u32).wrapping_sub(header_len as u32) & 0xffff,
    });
    let transport = if offset != 0 {
        Transport::Other
    } else {
        transport(packet, protocol, l3, l3 + header_len, ip_end)
            .unwrap_or_else(|short| cut(short, fragment.is_some(), protocol))
    };
    Ok(Headers::Ip {
        src,
        dst,
        transport,
        fragment,
    })
}

#[inline(always)]
fn ipv6(packet: &Packet, l3: usize) -> Result<Headers, ParseDrop> {
    let fixed: [u8; 8] = packet.read(l3).ok_or(ParseDrop::UnparsableTruncated)?;
    if fixed[0] >> 4 != 6 {
        return Err(ParseDrop::UnparsableInvalid);
    }
    let src = Addr::V6(packet.read(l3 + 8).ok_or(ParseDrop::UnparsableTruncated)?);
    let dst = Addr::V6(packet.read(l3 + 24).ok_or(ParseDrop::UnparsableTruncated)?);
    let payload_len = u16::from_be_bytes([fixed[4], fixed[5]]) as usize;
    let ip_end = if payload_len == 0 {
        UNBOUNDED
    } else {
        l3 + 40 + payload_len
    };
    let ip = |transport, fragment| {
        Ok(Headers::Ip {
            src,
            dst,
            transport,
            fragment,
        })
    };

    let mut next = fixed[6];
    let mut offset = l3 + 40;
    let mut fragment = None;
    let mut transport_found = false;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        if !is_extension(next) {
            transport_found = true;
            break;
        }
        let ext: [u8; 2] = match read(packet, offset, ip_end) {
            Ok(ext) => ext,
            // The protocol is not known yet: it could be TCP.
            Err(short) => return ip(cut(short, fragment.is_some(), IPPROTO_TCP), fragment),
        };
        let ext_len = match next {
            IPPROTO_FRAGMENT => {
                let frag: [u8; 8] = match read(packet, offset, ip_end) {
                    Ok(frag) => frag,
                    Err(short) => return ip(cut(short, false, IPPROTO_TCP), None),
                };
                let frag_offset = (u16::from_be_bytes([frag[2], frag[3]]) & 0xfff8) as u32;
                let more = frag[3] & 1 != 0;
                if frag_offset != 0 || more {
                    let data = offset + 8;
                    let len = if ip_end == UNBOUNDED {
                        0
                    } else {
                        (ip_end.saturating_sub(data) as u32) & 0xffff
                    };
                    fragment = Some(Fragment {
                        later: frag_offset != 0,
                        last: !more,
                        protocol: frag[0],
                        version: 6,
                        id: u32::from_be_bytes([frag[4], frag[5], frag[6], frag[7]]),
                        offset: frag_offset,
                        len,
                    });
                }
                if frag_offset != 0 {
                    // A later fragment: the transport header is in the first.
                    return ip(Transport::Other, fragment);
                }
                8
            }
            IPPROTO_AH => (ext[1] as usize + 2) * 4,
            _ => (ext[1] as usize + 1) * 8,
        };
        next = ext[0];
        offset += ext_len;
    }
    // After the sixth extension header the next one must be the transport.
    if !transport_found && is_extension(next) {
        return ip(
            Transport::Unparsable(ParseDrop::UnparsableExtHeaders, true),
            fragment,
        );
    }
    let transport = transport(packet, next, l3, offset, ip_end)
        .unwrap_or_else(|short| cut(short, fragment.is_some(), next));
    ip(transport, fragment)
}

/// The extension headers the parser walks (RFC 8200 section 4). ESP,
/// No Next Header, Mobility and the rest are upper layers to it: not TCP.
#[inline(always)]
fn is_extension(next: u8) -> bool {
    matches!(
        next,
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH | IPPROTO_FRAGMENT
    )
}

/// A header after the IP header could not be read: a first fragment too
/// short for it is a tiny fragment; anything else is unparsable.
#[inline(always)]
fn cut(short: Short, first_fragment: bool, protocol: u8) -> Transport {
    let reason = match short {
        Short::Datagram if first_fragment => ParseDrop::TinyFragment,
        Short::Datagram | Short::Frame => ParseDrop::UnparsableTruncated,
        Short::Invalid => ParseDrop::UnparsableInvalid,
    };
    Transport::Unparsable(reason, protocol == IPPROTO_TCP)
}

/// Reads a `T` at `offset`, inside both the datagram and the frame.
#[inline(always)]
fn read<T: Copy>(packet: &Packet, offset: usize, ip_end: usize) -> Result<T, Short> {
    if offset + core::mem::size_of::<T>() > ip_end {
        return Err(Short::Datagram);
    }
    packet.read(offset).ok_or(Short::Frame)
}

#[inline(always)]
fn transport(
    packet: &Packet,
    protocol: u8,
    l3: usize,
    l4: usize,
    ip_end: usize,
) -> Result<Transport, Short> {
    match protocol {
        IPPROTO_TCP => {
            let tcp: [u8; 20] = read(packet, l4, ip_end)?;
            let header_len = ((tcp[12] >> 4) as usize) * 4;
            if header_len < 20 {
                return Err(Short::Invalid);
            }
            // Options must be there too (the header length says they are).
            read::<[u8; 1]>(packet, l4 + header_len - 1, ip_end)?;
            Ok(Transport::Tcp(Tcp {
                src_port: u16::from_be_bytes([tcp[0], tcp[1]]),
                dst_port: u16::from_be_bytes([tcp[2], tcp[3]]),
                flags: tcp[13],
                l3,
                l4,
            }))
        }
        IPPROTO_UDP => {
            let udp: [u8; 8] = read(packet, l4, ip_end)?;
            Ok(Transport::Udp(
                u16::from_be_bytes([udp[0], udp[1]]),
                u16::from_be_bytes([udp[2], udp[3]]),
            ))
        }
        _ => Ok(Transport::Other),
    }
}
