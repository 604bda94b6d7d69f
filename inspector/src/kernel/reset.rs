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
//! An intercepted flow still opening is the one case where packets go to
//! the client, from the server's address: a nudge (`nudge_client`) for
//! the duplicate ACK the kernel program turns into the SYN to the server
//! again, and an RST once the flow expires (`reset_client`).
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

    /// Asks the client of an intercepted `flow` still opening for an ACK,
    /// which the kernel program turns into its SYN to the server again:
    /// a segment from the server's side one before the client's next
    /// expected number (`cookie`, our SYN-ACK's own), acknowledging
    /// `client_next`. Out of the client's window, it is answered with a
    /// duplicate ACK and otherwise ignored (RFC 9293 3.10.7.4; Linux's
    /// `tcp_validate_incoming` → `tcp_send_dupack`, at most one every
    /// `tcp_invalid_ratelimit`, 500 ms). A flow with timestamps gets our
    /// SYN-ACK's (`our_ts`) again, which passes the client's PAWS check
    /// and is what its answer echoes: a stack that drops a segment without
    /// one on such a connection (RFC 7323 section 3.2's SHOULD) would
    /// otherwise never answer.
    pub fn nudge_client(
        &self,
        flow: &FlowKey,
        cookie: u32,
        client_next: u32,
        our_ts: Option<u32>,
    ) -> io::Result<()> {
        self.send(flow, &Segment::nudge(cookie, client_next, our_ts))
    }

    /// Resets the client's side of an intercepted `flow` the server never
    /// opened, whose client expects `seq` next from us (the cookie + 1).
    pub fn reset_client(&self, flow: &FlowKey, seq: u32) -> io::Result<()> {
        self.send(flow, &Segment::towards_client(Segment::rst(seq)))
    }

    fn send(&self, flow: &FlowKey, segment: &Segment) -> io::Result<()> {
        let (client, server) = (ip_of(&flow.client), ip_of(&flow.server));
        let ports = (flow.client_port, flow.server_port);
        let (from, to, ports) = if segment.to_client {
            (server, client, (ports.1, ports.0))
        } else {
            (client, server, ports)
        };
        let (packet, socket) = match (from, to) {
            (IpAddr::V4(f), IpAddr::V4(t)) => {
                (v4(f.octets(), t.octets(), ports, segment), &self.v4)
            }
            (IpAddr::V6(f), IpAddr::V6(t)) => {
                (v6(f.octets(), t.octets(), ports, segment), &self.v6)
            }
            _ => return Err(io::Error::other("a flow between address families")),
        };
        // The port of a raw socket's address is the protocol: 0, the header is ours.
        let to = SockAddr::from(SocketAddr::new(to, 0));
        socket.send_to(&packet, &to).map(drop)
    }
}

/// The TCP fields of a segment that differ between an RST, a probe and a
/// nudge, and its direction.
struct Segment {
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    /// A timestamp option with this value (and an echo of 0: we do not
    /// keep the client's), after two NOPs as Linux lays it out.
    ts: Option<u32>,
    /// From the server's side to the client, not the other way.
    to_client: bool,
}

impl Segment {
    /// A bare RST (no ACK: a request socket checks only the sequence number).
    fn rst(seq: u32) -> Self {
        Self {
            seq,
            ack: 0,
            flags: 0x04,
            window: 0,
            ts: None,
            to_client: false,
        }
    }

    /// See [`Resetter::nudge_client`].
    fn nudge(cookie: u32, client_next: u32, ts: Option<u32>) -> Self {
        Self {
            seq: cookie,
            ack: client_next,
            flags: 0x10,
            window: 1024,
            ts,
            to_client: true,
        }
    }

    fn towards_client(self) -> Self {
        Self {
            to_client: true,
            ..self
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
            ts: None,
            to_client: false,
        }
    }

    /// The length of its TCP header, options included.
    fn len(&self) -> usize {
        if self.ts.is_some() { 32 } else { 20 }
    }

    /// The TCP header from and to `ports`, its checksum over `addresses`
    /// (source then destination).
    fn header(&self, addresses: &[u8], (from, to): (u16, u16)) -> Vec<u8> {
        let mut t = vec![0u8; self.len()];
        t[0..2].copy_from_slice(&from.to_be_bytes());
        t[2..4].copy_from_slice(&to.to_be_bytes());
        t[4..8].copy_from_slice(&self.seq.to_be_bytes());
        t[8..12].copy_from_slice(&self.ack.to_be_bytes());
        t[12] = (self.len() as u8 / 4) << 4;
        t[13] = self.flags;
        t[14..16].copy_from_slice(&self.window.to_be_bytes());
        if let Some(ts) = self.ts {
            t[20..24].copy_from_slice(&[1, 1, 8, 10]);
            t[24..28].copy_from_slice(&ts.to_be_bytes());
        }
        let check = csum::tcp(addresses, &t);
        t[16..18].copy_from_slice(&check.to_be_bytes());
        t
    }
}

/// An IPv4 packet from `from` to `to` (addresses, then ports) of `segment`.
fn v4(from: [u8; 4], to: [u8; 4], ports: (u16, u16), segment: &Segment) -> Vec<u8> {
    let total = (20 + segment.len() as u16).to_be_bytes();
    let mut p = vec![0x45, 0, total[0], total[1], 0, 0, 0x40, 0, 64, 6, 0, 0];
    p.extend_from_slice(&from);
    p.extend_from_slice(&to);
    let mut header = [0u8; 20];
    header.copy_from_slice(&p);
    p[10..12].copy_from_slice(&csum::ipv4_header(&header).to_be_bytes());
    let tcp = segment.header(&p[12..20], ports);
    p.extend_from_slice(&tcp);
    p
}

/// [`v4`] for IPv6.
fn v6(from: [u8; 16], to: [u8; 16], ports: (u16, u16), segment: &Segment) -> Vec<u8> {
    let payload = (segment.len() as u16).to_be_bytes();
    let mut p = vec![0x60, 0, 0, 0, payload[0], payload[1], 6, 64];
    p.extend_from_slice(&from);
    p.extend_from_slice(&to);
    let tcp = segment.header(&p[8..40], ports);
    p.extend_from_slice(&tcp);
    p
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    /// A flow's ports, client then server.
    const PORTS: (u16, u16) = (40000, 25);

    #[test]
    fn v4_rst_has_the_flows_ports_the_seq_and_valid_checksums() {
        let (c, s) = (Ipv4Addr::new(198, 18, 0, 10), Ipv4Addr::new(198, 18, 1, 25));
        let p = v4(c.octets(), s.octets(), PORTS, &Segment::rst(0x01020304));
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
        let p = v6(c.octets(), s.octets(), PORTS, &Segment::rst(7));
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
                PORTS,
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

    #[test]
    fn a_nudge_goes_from_the_server_to_the_client_one_before_its_window() {
        let (c, s) = (Ipv4Addr::new(198, 18, 0, 10), Ipv4Addr::new(198, 18, 1, 25));
        let segment = Segment::nudge(0x1000, 0x2000, None);
        assert!(segment.to_client);
        // As `Resetter::send` lays it out: from the server, its port first.
        let p = v4(s.octets(), c.octets(), (PORTS.1, PORTS.0), &segment);
        assert_eq!(&p[12..16], &s.octets());
        assert_eq!(&p[16..20], &c.octets());
        assert_eq!(&p[20..22], &25u16.to_be_bytes());
        assert_eq!(&p[22..24], &40000u16.to_be_bytes());
        // The client expects the cookie + 1 next: this is one before it.
        assert_eq!(&p[24..28], &0x1000u32.to_be_bytes());
        assert_eq!(&p[28..32], &0x2000u32.to_be_bytes());
        assert_eq!(p[33], 0x10, "ACK alone");
        let sum = csum::add_words(csum::pseudo(&p[12..20], 20), &p[20..]);
        assert_eq!(csum::fold(sum), 0xffff, "TCP checksum");
        let p = v4(
            s.octets(),
            c.octets(),
            (PORTS.1, PORTS.0),
            &Segment::nudge(0x1000, 0x2000, Some(0x0a0b0c0d)),
        );
        assert_eq!(p.len(), 52);
        assert_eq!(&p[2..4], &52u16.to_be_bytes(), "IP total length");
        assert_eq!(
            csum::fold(csum::add_words(0, &p[..20])),
            0xffff,
            "IP checksum"
        );
        assert_eq!(p[32] >> 4, 8, "data offset: 32 bytes");
        assert_eq!(&p[40..52], &[1, 1, 8, 10, 10, 11, 12, 13, 0, 0, 0, 0]);
        let sum = csum::add_words(csum::pseudo(&p[12..20], 32), &p[20..]);
        assert_eq!(csum::fold(sum), 0xffff, "TCP checksum with the timestamp");
        let rst = Segment::towards_client(Segment::rst(0x1001));
        assert!(rst.to_client && rst.flags == 0x04 && rst.seq == 0x1001);
    }
}
