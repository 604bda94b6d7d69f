//! SYN floods with spoofed sources, sent from inside a namespace through a
//! raw socket: what the connection limits and TCP intercept are for. The
//! sources are drawn from a prefix the caller routes back into the client
//! namespace, where nothing answers, so every SYN stays half-open.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context, Result};
use inspector_common::csum;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::Netns;

/// Spoofed IPv4 sources: 198.19.0.0/16, inside the benchmarking range.
pub const SPOOFED_V4: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 19, 0, 0), 16);
/// Spoofed IPv6 sources: 2001:2:0:ff00::/56, inside the benchmarking range.
pub const SPOOFED_V6: (Ipv6Addr, u8) = (Ipv6Addr::new(0x2001, 2, 0, 0xff00, 0, 0, 0, 0), 56);

/// A raw socket opened in a namespace, sending SYNs to one address.
pub struct SynFlood {
    socket: Socket,
    dst: SocketAddr,
    state: u32,
}

impl SynFlood {
    pub fn new(ns: &Netns, dst: SocketAddr) -> Result<Self> {
        let domain = Domain::for_address(dst);
        // IPPROTO_RAW implies IP_HDRINCL (IPV6_HDRINCL): we write the IP
        // header ourselves.
        let socket = ns
            .run(move || Socket::new(domain, Type::RAW, Some(Protocol::from(libc::IPPROTO_RAW))))?
            .context("opening a raw socket (needs root)")?;
        // Each flood its own sequence: several senders must not send the
        // same SYNs (the same flow, for conntrack and for our flow table).
        static FLOODS: AtomicU32 = AtomicU32::new(0);
        Ok(Self {
            socket,
            dst,
            state: seed(FLOODS.fetch_add(1, Ordering::Relaxed)),
        })
    }

    /// Sends `count` SYNs, each from a different spoofed address and port.
    pub fn send(&mut self, count: usize) -> Result<()> {
        // The kernel takes the port of a raw socket's address as the
        // protocol: say 0, the header is ours.
        let to = SockAddr::from(SocketAddr::new(self.dst.ip(), 0));
        for _ in 0..count {
            let r = self.next();
            let sport = 1024 + ((r >> 16) as u16 % 60000);
            let packet = match self.dst.ip() {
                IpAddr::V4(dst) => {
                    let host = r & ((1 << (32 - SPOOFED_V4.1)) - 1);
                    let src = Ipv4Addr::from(u32::from(SPOOFED_V4.0) | host.max(1));
                    syn_v4(src, sport, dst, self.dst.port(), r)
                }
                IpAddr::V6(dst) => {
                    let src = Ipv6Addr::from(u128::from(SPOOFED_V6.0) | u128::from(r.max(1)));
                    syn_v6(src, sport, dst, self.dst.port(), r)
                }
            };
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

/// The `n`th flood's first state (xorshift needs one that is not zero).
fn seed(n: u32) -> u32 {
    (0x2545_f491 ^ n.wrapping_mul(0x9e37_79b9)).max(1)
}

/// A TCP SYN with an MSS option and the checksum over `addresses` (source
/// then destination).
fn tcp_syn(addresses: &[u8], sport: u16, dport: u16, seq: u32, mss: u16) -> [u8; 24] {
    let mut t = [0u8; 24];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[12] = 6 << 4; // 24 bytes
    t[13] = 0x02; // SYN
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    t[20..24].copy_from_slice(&[2, 4, (mss >> 8) as u8, mss as u8]);
    let check = csum::tcp(addresses, &t);
    t[16..18].copy_from_slice(&check.to_be_bytes());
    t
}

/// An IPv4 SYN (the kernel fills the IP checksum of raw packets).
pub fn syn_v4(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, seq: u32) -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, 44, 0, 0, 0x40, 0, 64, 6, 0, 0];
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let tcp = tcp_syn(&p[12..20], sport, dport, seq, 1460);
    p.extend_from_slice(&tcp);
    p
}

/// An IPv6 SYN.
pub fn syn_v6(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, seq: u32) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0, 0, 24, 6, 64];
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let tcp = tcp_syn(&p[8..40], sport, dport, seq, 1440);
    p.extend_from_slice(&tcp);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_flood_starts_its_own_sequence() {
        let seeds: Vec<u32> = (0..64).map(seed).collect();
        for (i, a) in seeds.iter().enumerate() {
            assert_ne!(*a, 0);
            assert!(!seeds[i + 1..].contains(a), "flood {i} repeats a seed");
        }
    }

    #[test]
    fn syn_checksums_verify() {
        let p = syn_v4(
            Ipv4Addr::new(198, 19, 0, 7),
            4000,
            Ipv4Addr::new(198, 18, 1, 25),
            25,
            1,
        );
        // Over a correct segment, the checksum of the whole is zero.
        assert_eq!(csum::tcp(&p[12..20], &p[20..]), 0);
        assert_eq!(p[33], 0x02, "SYN only");
        let p = syn_v6(SPOOFED_V6.0, 4000, "2001:2:0:1::25".parse().unwrap(), 25, 1);
        assert_eq!(csum::tcp(&p[8..40], &p[40..]), 0);
        assert_eq!((p.len(), p[53]), (64, 0x02));
    }
}
