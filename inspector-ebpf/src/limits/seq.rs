//! The next sequence number each side of a tracked flow will send: an RST
//! or a FIN releases a flow only where the side that receives it would
//! take it.
//!
//! Why exact: the server resets a synchronized connection only on an RST
//! whose sequence number is exactly its RCV.NXT; one elsewhere in its
//! window gets a challenge ACK and one outside it is dropped (RFC 5961
//! section 3.2; Linux's `tcp_validate_incoming` calls `tcp_reset` only
//! when `seq == rcv_nxt`, at the end of its highest SACK block, or
//! `rcv_nxt - 1` once the peer's FIN is in (`tcp_reset_check`: by then a
//! FIN has released the flow). A SYN on a synchronized connection gets a
//! challenge ACK too, never a reset (RFC 5961 section 4,
//! `tcp_validate_incoming` step 4). Counting such an RST or SYN as the end
//! of the connection would let a client hold more connections than its
//! limits while the server keeps them all.
//!
//! Whose numbers: the server's side is trusted (no client can forge what
//! the server sends), so the server's next number moves with its in-order
//! segments, and its RST or FIN there releases the flow. The client's is
//! what the server acknowledged, for a flow forwarded to the server: a
//! client's segment can reach the kernel and not the server (a bad
//! checksum, a TTL that ends at the gateway, bytes past the server's
//! window), so neither the client's segments nor its RST or FIN decide
//! anything alone (`from_client_checked` in the parent module). For a
//! session the engine's local listener takes, whose side is not seen, the
//! client's next number moves with its in-order segments: a segment after
//! a gap, or far out of the window, does not move it.

use inspector_common::FlowEntry;

use crate::{
    packet::Packet,
    parse::{TCP_FIN, TCP_SYN, Tcp},
};

/// Which side of the flow a segment comes from.
#[derive(Clone, Copy)]
pub enum Side {
    Client,
    Server,
}

impl Side {
    /// The side's bit in `FlowEntry::seq_known` and `FlowEntry::fins`.
    #[inline(always)]
    pub fn bit(self) -> u8 {
        match self {
            Side::Client => inspector_common::seq_known::CLIENT,
            Side::Server => inspector_common::seq_known::SERVER,
        }
    }
}

/// The side's next sequence number, if known.
#[inline(always)]
pub fn next(e: &FlowEntry, side: Side) -> Option<u32> {
    if e.seq_known & side.bit() == 0 {
        return None;
    }
    Some(match side {
        Side::Client => e.client_next,
        Side::Server => e.server_next,
    })
}

/// Sets the side's next sequence number (after its SYN, or a validated ACK).
#[inline(always)]
pub fn set(e: &mut FlowEntry, side: Side, next: u32) {
    match side {
        Side::Client => e.client_next = next,
        Side::Server => e.server_next = next,
    }
    e.seq_known |= side.bit();
}

/// The server acknowledged the client's bytes up to `ack`: the client's
/// next number moves there (never back). The server's side is trusted:
/// no client can forge what it sends.
#[inline(always)]
pub fn acknowledged(e: &mut FlowEntry, ack: u32) {
    if let Some(next) = next(e, Side::Client)
        && after(ack, next)
    {
        set(e, Side::Client, ack);
    }
}

/// Whether the segment starting at `seq` starts at the side's next
/// sequence number (an unknown one matches nothing).
#[inline(always)]
pub fn at_next(e: &FlowEntry, side: Side, seq: u32) -> bool {
    next(e, side) == Some(seq)
}

/// Moves the side's next sequence number past the segment at `seq`, when
/// it starts at or before it and ends after it.
#[inline(always)]
pub fn advance(e: &mut FlowEntry, side: Side, seq: u32, end: u32) {
    if let Some(next) = next(e, side)
        && !after(seq, next)
        && after(end, next)
    {
        set(e, side, end);
    }
}

/// The sequence number just past the segment at `seq`: its payload, and
/// one for a SYN and for a FIN.
#[inline(always)]
pub fn end(packet: &Packet, tcp: &Tcp, seq: u32) -> Option<u32> {
    // Two-byte reads: LLVM turns a one-byte read's bounds check into one
    // the verifier does not follow.
    let version = packet.read::<[u8; 2]>(tcp.l3)?[0] >> 4;
    let ip_end = if version == 4 {
        tcp.l3 + packet.u16_at(tcp.l3 + 2)? as usize
    } else {
        // An IPv6 jumbogram (payload length 0) is never forwarded here.
        tcp.l3 + 40 + packet.u16_at(tcp.l3 + 4)? as usize
    };
    let header = ((packet.read::<[u8; 2]>(tcp.l4 + 12)?[0] >> 4) as usize) * 4;
    let payload = ip_end.saturating_sub(tcp.l4 + header) as u32;
    let flags = (tcp.flags & TCP_SYN != 0) as u32 + (tcp.flags & TCP_FIN != 0) as u32;
    Some(seq.wrapping_add(payload).wrapping_add(flags))
}

/// `a` comes after `b` in sequence space (RFC 9293 3.4, modulo 2^32).
#[inline(always)]
fn after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}
