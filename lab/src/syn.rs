//! SYN floods with spoofed sources, sent from inside a namespace through a
//! raw socket: what the connection limits and TCP intercept are for. The
//! sources are drawn from a prefix the caller routes back into the client
//! namespace, where nothing answers, so every SYN stays half-open.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{Context, Result};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::Netns;

/// Spoofed sources: 198.19.0.0/16, inside the benchmarking range.
pub const SPOOFED_V4: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 19, 0, 0), 16);

/// A raw IPv4 socket opened in a namespace, sending SYNs.
pub struct SynFlood {
    socket: Socket,
    dst: SocketAddr,
    state: u32,
}

impl SynFlood {
    pub fn new(ns: &Netns, dst: SocketAddr) -> Result<Self> {
        // IPPROTO_RAW implies IP_HDRINCL: we write the IP header ourselves.
        let socket = ns
            .run(|| {
                Socket::new(
                    Domain::IPV4,
                    Type::RAW,
                    Some(Protocol::from(libc::IPPROTO_RAW)),
                )
            })?
            .context("opening a raw socket (needs root)")?;
        Ok(Self {
            socket,
            dst,
            state: 0x2545_f491,
        })
    }

    /// Sends `count` SYNs, each from a different spoofed address and port.
    pub fn send(&mut self, count: usize) -> Result<()> {
        let IpAddr::V4(dst) = self.dst.ip() else {
            anyhow::bail!("SYN floods are IPv4 only");
        };
        let to = SockAddr::from(self.dst);
        for _ in 0..count {
            let r = self.next();
            let host = r & ((1 << (32 - SPOOFED_V4.1)) - 1);
            let src = Ipv4Addr::from(u32::from(SPOOFED_V4.0) | host.max(1));
            let packet = syn_v4(
                src,
                1024 + (r >> 16) as u16 % 60000,
                dst,
                self.dst.port(),
                r,
            );
            self.socket.send_to(&packet, &to).context("sending a SYN")?;
        }
        Ok(())
    }

    /// xorshift32: sources and sequence numbers that look random, and are
    /// the same from run to run.
    fn next(&mut self) -> u32 {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.state = x;
        x
    }
}

/// An IPv4 SYN with an MSS option and a valid TCP checksum (the kernel fills
/// the IP checksum of raw packets).
pub fn syn_v4(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, seq: u32) -> Vec<u8> {
    let tcp_len = 24u16;
    let mut p = Vec::with_capacity(44);
    // IPv4: version/IHL, TOS, total length, id, flags (DF), TTL, TCP, checksum.
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&(20 + tcp_len).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    // TCP: ports, seq, ack, data offset 6 words, SYN, window, checksum, urg.
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, 0x60, 0x02, 0xfa, 0xf0, 0, 0, 0, 0]);
    // MSS 1460.
    p.extend_from_slice(&[2, 4, 0x05, 0xb4]);
    let mut pseudo = Vec::with_capacity(12 + tcp_len as usize);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&tcp_len.to_be_bytes());
    pseudo.extend_from_slice(&p[20..]);
    let sum = checksum(&pseudo);
    p[36..38].copy_from_slice(&sum.to_be_bytes());
    p
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syn_checksum_verifies() {
        let p = syn_v4(
            Ipv4Addr::new(198, 19, 0, 7),
            4000,
            Ipv4Addr::new(198, 18, 1, 25),
            25,
            1,
        );
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&p[12..20]);
        pseudo.extend_from_slice(&[0, 6, 0, 24]);
        pseudo.extend_from_slice(&p[20..]);
        // A correct checksum makes the sum over everything 0xffff.
        assert_eq!(checksum(&pseudo), 0);
        assert_eq!(p[33], 0x02, "SYN only");
    }
}
