//! RSTs to protected servers for half-open flows the sweeper gives up on,
//! as the firewall does when an embryonic connection times out: without
//! one, the server keeps the flow in its SYN queue and resends its SYN-ACK
//! until `tcp_synack_retries` (5: about 63 s) gives up.
//!
//! The RST comes from the client's address and port, with the sequence
//! number the server expects next from the client (its ISN + 1, recorded
//! by the kernel program from the SYN). Linux accepts an RST to a request
//! socket when its sequence number is in the window starting at that
//! number, and then drops the request (`tcp_check_req`, net/ipv4/
//! tcp_minisocks.c: `if (flg & (TCP_FLAG_RST|TCP_FLAG_SYN))` → `embryonic_reset` →
//! `inet_csk_reqsk_queue_drop`); ISN + 1 is also the exact match RFC 5961
//! section 3.2 asks of an established connection's RST.
//!
//! A client's RST that the kernel cannot be sure the server took (see
//! `from_client_checked` in the kernel program) is settled with a
//! question instead (`probe`): an ACK from the client's address that
//! acknowledges nothing new, so old that a live connection drops it
//! unread (RFC 5961 section 5.2, Linux's `tcp_ack` for an ACK before
//! `snd_una - max_window`: at most a challenge ACK), while a server that
//! no longer has the connection answers it with an RST (RFC 9293 3.10.7.1,
//! Linux's listener: `tcp_rcv_state_process` returns 1 for an ACK), which
//! releases the flow in the kernel.
//!
//! Sent from userspace through `IPPROTO_RAW` sockets: the kernel program
//! runs only when a packet arrives, and an expiry is the absence of one.
//! The packets go out through the gateway's routing, like the flow's own.

use std::{
    io,
    net::{IpAddr, SocketAddr},
};

use anyhow::{Context, Result};
use inspector_common::{FlowKey, csum};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::limits::ip_of;

/// The raw sockets the RSTs go out through (opening them needs CAP_NET_RAW).
pub struct Resetter {
    v4: Socket,
    v6: Socket,
}

impl Resetter {
    pub fn open() -> Result<Self> {
        // IPPROTO_RAW implies IP_HDRINCL (IPV6_HDRINCL): the header is ours,
        // and such a socket receives nothing.
        let raw = |domain| {
            Socket::new(domain, Type::RAW, Some(Protocol::from(libc::IPPROTO_RAW)))
                .context("opening a raw socket for the RSTs to servers (needs CAP_NET_RAW)")
        };
        Ok(Self {
            v4: raw(Domain::IPV4)?,
            v6: raw(Domain::IPV6)?,
        })
    }

    /// Resets the server's side of `flow` (client -> server), whose client
    /// would send `seq` next.
    pub fn reset(&self, flow: &FlowKey, seq: u32) -> io::Result<()> {
        self.send(flow, &Segment::rst(seq))
    }

    /// Asks the server whether it still has `flow`, whose client sends
    /// `seq` next and whose server sends `server_next`: an RST answers no.
    pub fn probe(&self, flow: &FlowKey, seq: u32, server_next: u32) -> io::Result<()> {
        self.send(flow, &Segment::probe(seq, server_next))
    }

    fn send(&self, flow: &FlowKey, segment: &Segment) -> io::Result<()> {
        let (client, server) = (ip_of(&flow.client), ip_of(&flow.server));
        let (packet, socket) = match (client, server) {
            (IpAddr::V4(c), IpAddr::V4(s)) => (v4(c.octets(), s.octets(), flow, segment), &self.v4),
            (IpAddr::V6(c), IpAddr::V6(s)) => (v6(c.octets(), s.octets(), flow, segment), &self.v6),
            _ => return Err(io::Error::other("a flow between address families")),
        };
        // The port of a raw socket's address is the protocol: 0, the header is ours.
        let to = SockAddr::from(SocketAddr::new(server, 0));
        socket.send_to(&packet, &to).map(drop)
    }
}

/// The TCP fields of a segment to the server that differ between an RST
/// and a probe.
struct Segment {
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
}

impl Segment {
    /// A bare RST (no ACK: a request socket checks only the sequence number).
    fn rst(seq: u32) -> Self {
        Self {
            seq,
            ack: 0,
            flags: 0x04,
            window: 0,
        }
    }

    /// An ACK older than any window (2^30 bytes at most, with scaling)
    /// before everything the server sent: never acceptable, never
    /// acknowledging anything.
    fn probe(seq: u32, server_next: u32) -> Self {
        Self {
            seq,
            ack: server_next.wrapping_sub(0x6000_0000),
            flags: 0x10,
            window: 1024,
        }
    }

    /// The TCP header, its checksum over `addresses` (source then destination).
    fn header(&self, addresses: &[u8], flow: &FlowKey) -> [u8; 20] {
        let mut t = [0u8; 20];
        t[0..2].copy_from_slice(&flow.client_port.to_be_bytes());
        t[2..4].copy_from_slice(&flow.server_port.to_be_bytes());
        t[4..8].copy_from_slice(&self.seq.to_be_bytes());
        t[8..12].copy_from_slice(&self.ack.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = self.flags;
        t[14..16].copy_from_slice(&self.window.to_be_bytes());
        let check = csum::tcp(addresses, &t);
        t[16..18].copy_from_slice(&check.to_be_bytes());
        t
    }
}

fn v4(client: [u8; 4], server: [u8; 4], flow: &FlowKey, segment: &Segment) -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0];
    p.extend_from_slice(&client);
    p.extend_from_slice(&server);
    let mut header = [0u8; 20];
    header.copy_from_slice(&p);
    p[10..12].copy_from_slice(&csum::ipv4_header(&header).to_be_bytes());
    let tcp = segment.header(&p[12..20], flow);
    p.extend_from_slice(&tcp);
    p
}

fn v6(client: [u8; 16], server: [u8; 16], flow: &FlowKey, segment: &Segment) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0, 0, 20, 6, 64];
    p.extend_from_slice(&client);
    p.extend_from_slice(&server);
    let tcp = segment.header(&p[8..40], flow);
    p.extend_from_slice(&tcp);
    p
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::kernel::limits::addr16;

    fn flow(client: IpAddr, server: IpAddr) -> FlowKey {
        FlowKey {
            client: addr16(client),
            server: addr16(server),
            client_port: 40000,
            server_port: 25,
            protocol: 6,
            ..FlowKey::default()
        }
    }

    #[test]
    fn v4_rst_has_the_flows_ports_the_seq_and_valid_checksums() {
        let (c, s) = (Ipv4Addr::new(198, 18, 0, 10), Ipv4Addr::new(198, 18, 1, 25));
        let p = v4(
            c.octets(),
            s.octets(),
            &flow(c.into(), s.into()),
            &Segment::rst(0x01020304),
        );
        assert_eq!(p.len(), 40);
        assert_eq!(
            csum::fold(csum::add_words(0, &p[..20])),
            0xffff,
            "IP checksum"
        );
        assert_eq!(&p[20..22], &40000u16.to_be_bytes());
        assert_eq!(&p[22..24], &25u16.to_be_bytes());
        assert_eq!(&p[24..28], &[1, 2, 3, 4]);
        assert_eq!(p[33], 0x04, "RST alone");
        let sum = csum::add_words(csum::pseudo(&p[12..20], 20), &p[20..]);
        assert_eq!(csum::fold(sum), 0xffff, "TCP checksum");
    }

    #[test]
    fn v6_rst_has_valid_checksum() {
        let (c, s): (Ipv6Addr, Ipv6Addr) = (
            "2001:2::2".parse().unwrap(),
            "2001:2:0:1::25".parse().unwrap(),
        );
        let p = v6(
            c.octets(),
            s.octets(),
            &flow(c.into(), s.into()),
            &Segment::rst(7),
        );
        assert_eq!(p.len(), 60);
        assert_eq!(&p[8..24], &c.octets());
        let sum = csum::add_words(csum::pseudo(&p[8..40], 20), &p[40..]);
        assert_eq!(csum::fold(sum), 0xffff, "TCP checksum");
    }

    #[test]
    fn a_probe_acknowledges_nothing_the_server_sent_in_any_window() {
        let (c, s) = (Ipv4Addr::new(198, 18, 0, 10), Ipv4Addr::new(198, 18, 1, 25));
        for server_next in [0u32, 0x7000_0000, u32::MAX] {
            let p = v4(
                c.octets(),
                s.octets(),
                &flow(c.into(), s.into()),
                &Segment::probe(5, server_next),
            );
            assert_eq!(p[33], 0x10, "ACK alone");
            assert_eq!(&p[24..28], &5u32.to_be_bytes());
            let ack = u32::from_be_bytes(p[28..32].try_into().unwrap());
            // Before SND.UNA - max_window for any SND.UNA in the last 2^30
            // bytes the server sent and any window (at most 2^30).
            let behind = server_next.wrapping_sub(ack);
            assert!((1 << 31) - 1 > behind && behind > (1 << 30) + (1 << 28));
            let sum = csum::add_words(csum::pseudo(&p[12..20], 20), &p[20..]);
            assert_eq!(csum::fold(sum), 0xffff, "TCP checksum");
        }
    }
}
